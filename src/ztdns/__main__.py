from ztdns.cli import main

raise SystemExit(main())
