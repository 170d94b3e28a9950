"""Orders: the local policy, audit log and id store, placing and cancelling, and finding orders in TWS."""
