//! scoring (not yet implemented).
