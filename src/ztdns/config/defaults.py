"""The built-in default configuration: Do53 on 127.0.0.1:5353, a local zone ``ztdns.test.``, default deny.

It needs no internet: loopback clients may resolve the built-in zone and nothing else, and every answer shows
the policy machinery at work (try ``blocked.ztdns.test`` for an EDE 15 answer). A client that shows the
development client certificate (``ztdns serve`` prints how) is the identity ``dev-client`` instead, whatever its
address, and its policy also allows ``workload.ztdns.test``, which loopback clients are denied.
"""

DEFAULT_TOML = """
[server]
state_dir = "state"

[[listen]]
transport = "udp"
address = "127.0.0.1:5353"

[[listen]]
transport = "tcp"
address = "127.0.0.1:5353"

[resolver]
mode = "none"

[identities.loopback]
networks = ["127.0.0.0/8", "::1/128"]
policies = ["default"]

[identities.dev-client]
certificates = ["spiffe://ztdns.test/dev/client"]
policies = ["workload"]

[unknown_clients]
action = "refuse"

[policies.default]
allow = ["ztdns.test", "**.ztdns.test"]
deny = ["blocked.ztdns.test", "**.blocked.ztdns.test", "workload.ztdns.test"]

[policies.workload]
allow = ["ztdns.test", "**.ztdns.test"]
deny = ["blocked.ztdns.test", "**.blocked.ztdns.test"]

[[local_zones]]
name = "ztdns.test"
records = [
    "ztdns.test. 3600 IN SOA ns.ztdns.test. hostmaster.ztdns.test. 1 3600 600 86400 300",
    "ztdns.test. 3600 IN NS ns.ztdns.test.",
    "ns.ztdns.test. 3600 IN A 127.0.0.1",
    "www.ztdns.test. 300 IN A 127.0.0.1",
    "www.ztdns.test. 300 IN AAAA ::1",
    "alias.ztdns.test. 300 IN CNAME www.ztdns.test.",
    "sneaky.ztdns.test. 300 IN CNAME www.blocked.ztdns.test.",
    "www.blocked.ztdns.test. 300 IN A 127.0.0.2",
    "workload.ztdns.test. 300 IN A 127.0.0.3",
    "ztdns.test. 300 IN TXT \\"ztdns built-in zone\\"",
]

[log.query_log]
output = "stdout"

[metrics]
enabled = false
"""
