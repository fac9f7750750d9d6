//! preprocess (not yet implemented).
