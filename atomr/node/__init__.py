"""The node edge: `python -m atomr.node` and what runs it.

`main` parses the command line and the config file and runs a node until SIGINT/SIGTERM;
`runtime` starts the node's actor system and its actors; `process` runs a node as a child process
(for scripts, benchmarks and tests). Nothing is imported here, so that `main` can set Thespian's
environment before anything imports thespian.

May import every layer below it (core, runners, config, observability, serving, cluster, actors,
http).
"""
