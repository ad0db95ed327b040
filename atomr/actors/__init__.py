"""The actors (Thespian), one type per module, and the messages they exchange (`messages`).

Actors host runners and move messages; what they decide is delegated to plain state classes
(`atomr.core` policies, `replica_set`, ...) that can be tested without processes.

May import: `atomr.core`, `atomr.runners` (the runtime catalog), `atomr.config`,
`atomr.observability`, `atomr.serving`, `atomr.cluster`, `atomr.http` (the front a gateway
serves, through its port). Never the edges (`atomr.node`, `atomr.client`, `atomr.cli`).
"""
