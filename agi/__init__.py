"""Asterisk adapter: our asyncio FastAGI server and the AMI client (panoramisk).

Speaks Asterisk's wire protocols and drives :mod:`consent_ivr`; never imports
:mod:`esl_listener`.
"""
