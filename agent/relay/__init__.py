"""The relay half: the outbound WebSocket to the MA Tracker cloud and the actions it asks for."""
