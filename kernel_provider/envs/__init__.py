"""Changing envs on the host: request → job → all-or-nothing operation; a restarted server says what became of it."""
