"""The control plane: a framed msgpack protocol on a Unix socket (`protocol`), the server
(`server`), one handler per command (`handlers`) and the client agentctl uses (`client`).

Kept empty on purpose: `agentctl` imports `agentd.control.client`, which must not pull in the
server side (asyncio, uvloop, the daemon).
"""
