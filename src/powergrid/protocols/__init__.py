"""The protocol machines: pure, deterministic state machines (events in, actions out).

One module (or small package of parts) per machine: :mod:`.unicast` (reliable
unicast), :mod:`.multicast` (reliable ordered multicast), :mod:`.membership`
(heartbeat membership), :mod:`.election` (bully election with epochs) and
:mod:`.market` (client, broker and lead-broker roles of the power market).
They import only the layers below them (``events``, ``wire``, ``types``) and
never a transport, a clock or the global ``random``.
"""
