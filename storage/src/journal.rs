//! The agent's local journal (filled in by the host-operations work, issue 4).
