//! knn (not yet implemented).
