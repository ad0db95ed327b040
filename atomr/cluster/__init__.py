"""Everything that knows Thespian's internals and its wire: configuring Thespian before a system
starts (`thespian_setup`), the transport speed patches and bug fixes applied at import, frame
authentication with the cluster key (`auth`), and starting, joining, connecting to and stopping
actor systems by PID (`system`).

May import: `atomr.core`, `atomr.observability`. Never actors, runners or the HTTP front.
"""
