"""Party runtime: sessions, transports, TLS, dealer, launcher."""
