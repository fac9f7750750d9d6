//! visualize (not yet implemented).
