"""FreeSWITCH adapter: our asyncio ESL outbound-socket server and inbound ESL client.

Speaks the Event Socket protocol and drives :mod:`consent_ivr`; never imports :mod:`agi`.
"""
