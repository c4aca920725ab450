"""Bare-metal nodes: the Redfish client cumulo drives BMCs with, and the BMC emulator that
stands in for physical servers in tests and in `cumulo up`."""
