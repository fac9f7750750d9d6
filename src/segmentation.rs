//! segmentation (not yet implemented).
