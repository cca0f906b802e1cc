"""Hardware wallets: the only package that imports hwilib or trezorlib (and the simulator)."""
