"""`velvet connectivity test`: a suite of real-traffic checks in a sandbox, and its pod-side helpers."""
