"""The IB half: everything that talks to TWS / IB Gateway through ibapi."""
