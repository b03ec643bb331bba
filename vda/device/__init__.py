"""Where the network runs: runtimes that compute encoder features and depth windows on a device."""
