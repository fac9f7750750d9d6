//! anomaly_map (not yet implemented).
