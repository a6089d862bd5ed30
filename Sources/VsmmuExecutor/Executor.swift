// The executor: lock, journal, apply, verify.
