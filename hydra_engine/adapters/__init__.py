"""Live and replay adapters that turn outside sources (FRED, GitHub releases, crypto news) into HYDRA events."""
