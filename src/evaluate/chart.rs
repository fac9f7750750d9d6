//! An SVG bar chart of image AUROC per category (feature `chart`, drawn with `plotters`).

use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;

use super::Summary;
use crate::error::{Error, Result};

fn chart_err(e: impl std::fmt::Display) -> Error {
    Error::input(format!("drawing the chart failed: {e}"))
}

/// Bar bottom: 5 percentage points below the lowest whisker, rounded down to a multiple of 5,
/// within `[0, 95]`.
fn y_floor(lowest_pct: f64) -> f64 {
    (((lowest_pct - 5.0) / 5.0).floor() * 5.0).clamp(0.0, 95.0)
}

/// A bar chart of image AUROC (in %) per category: the bar is the mean over seeds, the
/// whisker spans min to max. `mean`, when given, is drawn last in another colour. Returns the
/// SVG document.
///
/// # Errors
/// [`Error::InvalidInput`] for no summaries, a non-finite value, or a drawing failure.
pub fn chart_svg(summaries: &[Summary], mean: Option<&Summary>, title: &str) -> Result<String> {
    if summaries.is_empty() {
        return Err(Error::input("no category to draw (empty input)"));
    }
    let bars: Vec<&Summary> = summaries.iter().chain(mean).collect();
    let mut lowest = f64::INFINITY;
    for b in &bars {
        let s = &b.image_auroc;
        if !(s.mean.is_finite() && s.min.is_finite() && s.max.is_finite()) {
            return Err(Error::input(format!(
                "{}: image AUROC is not finite; cannot draw it",
                b.name
            )));
        }
        lowest = lowest.min(100.0 * s.min);
    }
    let y0 = y_floor(lowest);
    let range = 100.0 - y0;
    let step = if range <= 10.0 {
        1.0
    } else if range <= 50.0 {
        5.0
    } else {
        10.0
    };
    let n = bars.len();
    let names: Vec<String> = bars.iter().map(|b| b.name.clone()).collect();
    let width = (72 * n as u32 + 120).max(640);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (width, 420)).into_drawing_area();
        root.fill(&WHITE).map_err(chart_err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 16))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(56)
            // A little headroom so that whisker caps at 100 % stay visible.
            .build_cartesian_2d((0..n - 1).into_segmented(), y0..100.0 + range / 50.0)
            .map_err(chart_err)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .light_line_style(WHITE)
            .x_labels(n)
            .x_label_formatter(&|v| match v {
                SegmentValue::CenterOf(i) => names.get(*i).cloned().unwrap_or_default(),
                _ => String::new(),
            })
            .y_labels((range / step).round() as usize + 1)
            .y_desc("image AUROC (%)")
            .y_label_formatter(&|v| format!("{v:.0}"))
            .label_style(("sans-serif", 13))
            .draw()
            .map_err(chart_err)?;
        let bar_colour = RGBColor(70, 120, 180);
        let mean_colour = RGBColor(220, 130, 40);
        chart
            .draw_series(bars.iter().enumerate().map(|(i, b)| {
                let colour = if mean.is_some() && i == n - 1 {
                    mean_colour
                } else {
                    bar_colour
                };
                let mut r = Rectangle::new(
                    [
                        (SegmentValue::Exact(i), y0),
                        (SegmentValue::Exact(i + 1), 100.0 * b.image_auroc.mean),
                    ],
                    colour.filled(),
                );
                r.set_margin(0, 0, 12, 12);
                r
            }))
            .map_err(chart_err)?;
        // Whiskers from min to max with caps 14 px wide.
        let whisker = BLACK.stroke_width(2);
        chart
            .draw_series(bars.iter().enumerate().map(|(i, b)| {
                let x = SegmentValue::CenterOf(i);
                let (lo, hi) = (100.0 * b.image_auroc.min, 100.0 * b.image_auroc.max);
                PathElement::new(vec![(x.clone(), lo), (x, hi)], whisker)
            }))
            .map_err(chart_err)?;
        chart
            .draw_series(bars.iter().enumerate().flat_map(|(i, b)| {
                [b.image_auroc.min, b.image_auroc.max].map(|v| {
                    EmptyElement::at((SegmentValue::CenterOf(i), 100.0 * v))
                        + PathElement::new(vec![(-7, 0), (7, 0)], whisker)
                })
            }))
            .map_err(chart_err)?;
        root.present().map_err(chart_err)?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::evaluate::Stat;

    fn summary(name: &str, mean: f64, min: f64, max: f64) -> Summary {
        let s = Stat { mean, min, max };
        Summary {
            name: name.into(),
            seeds: vec![0, 1],
            image_auroc: s,
            pixel_auroc: s,
            aupro: s,
            image_f1_max: s,
            fit_seconds: s,
            predict_ms_per_image: s,
        }
    }

    #[test]
    fn floor_is_a_multiple_of_five_below_the_lowest_whisker() {
        assert_eq!(y_floor(97.3), 90.0);
        assert_eq!(y_floor(95.0), 90.0);
        assert_eq!(y_floor(100.0), 95.0);
        assert_eq!(y_floor(52.0), 45.0);
        assert_eq!(y_floor(3.0), 0.0);
    }

    #[test]
    fn svg_names_every_category_and_draws_one_bar_each() {
        let cats = [
            summary("bottle", 0.99, 0.98, 1.0),
            summary("cable", 0.95, 0.93, 0.97),
        ];
        let mean = summary("mean", 0.97, 0.955, 0.985);
        let svg = chart_svg(&cats, Some(&mean), "test chart").unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..40.min(svg.len())]);
        for label in ["bottle", "cable", "mean", "test chart", "image AUROC (%)"] {
            assert!(svg.contains(label), "missing {label}");
        }
        // Bars are filled rectangles in the two bar colours: 2 categories + the mean.
        let blue = svg.matches("fill=\"#4678B4\"").count();
        let orange = svg.matches("fill=\"#DC8228\"").count();
        assert_eq!((blue, orange), (2, 1), "{svg}");
    }

    #[test]
    fn rejects_empty_and_nan() {
        assert!(chart_svg(&[], None, "t").is_err());
        let bad = summary("x", f64::NAN, 0.5, 0.6);
        assert!(chart_svg(&[bad], None, "t").is_err());
    }
}
