// the console (filled in by the next commit)
