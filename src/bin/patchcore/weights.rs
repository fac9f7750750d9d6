//! `patchcore weights`: seeded random weights, so the tool can be tried without downloads.

use patchcore::backbone::Backbone;

use crate::args::WeightsArgs;
use crate::common::CliResult;
use crate::outputs::check_output_file;

pub fn run(a: WeightsArgs) -> CliResult {
    check_output_file(&a.out, a.force)?;
    let sha = Backbone::write_random_weights(&a.out, &a.random, a.last_layer, a.seed, a.force)?;
    let hex = crate::common::hex(&sha);
    eprintln!(
        "wrote {}: RANDOM {} weights (seed {}, up to {}), sha256 {hex}",
        a.out.display(),
        a.random.name,
        a.seed,
        a.last_layer
    );
    eprintln!(
        "warning: random weights: scores are meaningless; they only let you try the commands \
         (real weights: scripts/export_torchvision.py, see the README section Weights)"
    );
    Ok(())
}
