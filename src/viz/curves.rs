//! Training curves: `curves.png` in a run folder, loss and accuracy per epoch (train and
//! validation), drawn with plotters into a bitmap and encoded with the image crate. Text
//! uses DejaVu Sans, shipped in src/viz/fonts/ and registered from bytes, so no system font is
//! needed.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::OnceLock;

use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

use super::VizError;
use crate::train::EpochMetrics;

/// Size of curves.png in pixels.
pub const WIDTH: u32 = 1200;
pub const HEIGHT: u32 = 450;

/// DejaVu Sans (Bitstream Vera license, see src/viz/fonts/DejaVuSans-LICENSE.txt).
static FONT: &[u8] = include_bytes!("fonts/DejaVuSans.ttf");
const FAMILY: &str = "sans-serif";

fn register() -> Result<(), String> {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| {
        register_font(FAMILY, FontStyle::Normal, FONT)
            .map_err(|_| "the bundled font could not be loaded".to_string())
    })
    .clone()
}

const TRAIN: RGBColor = RGBColor(31, 119, 180);
const VAL: RGBColor = RGBColor(214, 39, 40);

/// Draw loss (left) and accuracy (right) per epoch, train and validation, to a PNG at
/// `path` (written to a temporary file first, then renamed, so a viewer never sees half a
/// file). Later entries for the same epoch replace earlier ones (a resumed epoch).
pub fn write_curves(path: &Path, epochs: &[EpochMetrics]) -> Result<(), VizError> {
    let plot_err = |message: String| VizError::Plot {
        path: path.to_path_buf(),
        message,
    };
    register().map_err(plot_err)?;
    let by_epoch: BTreeMap<u64, &EpochMetrics> = epochs.iter().map(|m| (m.epoch, m)).collect();
    let rows: Vec<&EpochMetrics> = by_epoch.into_values().collect();
    let mut buf = vec![255u8; (WIDTH * HEIGHT * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| plot_err(e.to_string()))?;
        let (left, right) = root.split_horizontally(WIDTH / 2);
        let series = |f: fn(&EpochMetrics) -> f64| -> Vec<(u64, f64)> {
            rows.iter()
                .map(|m| (m.epoch, f(m)))
                .filter(|(_, v)| v.is_finite())
                .collect()
        };
        let loss_max = rows
            .iter()
            .flat_map(|m| [m.train_loss, m.val_loss])
            .filter(|v| v.is_finite())
            .fold(0.0f64, f64::max);
        panel(
            &left,
            "Loss",
            "cross-entropy",
            0.0..if loss_max > 0.0 { loss_max * 1.1 } else { 1.0 },
            &rows,
            [series(|m| m.train_loss), series(|m| m.val_loss)],
        )
        .map_err(plot_err)?;
        panel(
            &right,
            "Accuracy",
            "accuracy",
            0.0..1.0,
            &rows,
            [series(|m| m.train_accuracy), series(|m| m.val_accuracy)],
        )
        .map_err(plot_err)?;
        root.present().map_err(|e| plot_err(e.to_string()))?;
    }
    let img = image::RgbImage::from_raw(WIDTH, HEIGHT, buf)
        .ok_or_else(|| plot_err("bitmap of the wrong size".into()))?;
    let tmp = path.with_extension("png.tmp");
    img.save_with_format(&tmp, image::ImageFormat::Png)
        .map_err(|source| VizError::Image {
            path: tmp.clone(),
            source,
        })?;
    std::fs::rename(&tmp, path).map_err(|source| VizError::Io {
        path: path.to_path_buf(),
        source,
    })
}

fn panel<DB: DrawingBackend>(
    area: &DrawingArea<DB, plotters::coord::Shift>,
    title: &str,
    y_desc: &str,
    y_range: std::ops::Range<f64>,
    rows: &[&EpochMetrics],
    [train, val]: [Vec<(u64, f64)>; 2],
) -> Result<(), String> {
    let e = |e: DrawingAreaErrorKind<DB::ErrorType>| e.to_string();
    let last = rows.iter().map(|m| m.epoch).max().unwrap_or(1);
    let mut chart = ChartBuilder::on(area)
        .caption(title, (FAMILY, 22))
        .margin(14)
        .x_label_area_size(44)
        .y_label_area_size(60)
        .build_cartesian_2d(0u64..last + 1, y_range)
        .map_err(e)?;
    chart
        .configure_mesh()
        .x_desc("epoch")
        .y_desc(y_desc)
        .label_style((FAMILY, 14))
        .axis_desc_style((FAMILY, 15))
        .x_labels((last as usize + 2).min(12))
        .light_line_style(RGBColor(246, 246, 246))
        .draw()
        .map_err(e)?;
    for (name, colour, points) in [("train", TRAIN, train), ("validation", VAL, val)] {
        chart
            .draw_series(LineSeries::new(points.clone(), colour.stroke_width(2)))
            .map_err(e)?
            .label(name)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
            });
        chart
            .draw_series(points.iter().map(|&p| Circle::new(p, 3, colour.filled())))
            .map_err(e)?;
    }
    chart
        .configure_series_labels()
        .label_font((FAMILY, 14))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(e)?;
    Ok(())
}

/// The epochs already in a run's metrics.jsonl (for a resumed run's curves); empty when
/// not resuming or when there is no file. Unreadable lines are skipped.
pub fn previous_epochs(metrics: &Path, resuming: bool) -> Vec<EpochMetrics> {
    if !resuming {
        return Vec::new();
    }
    match std::fs::read_to_string(metrics) {
        Ok(text) => text.lines().filter_map(EpochMetrics::from_json).collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => {
            eprintln!(
                "warning: {}: {e}; curves.png starts afresh",
                metrics.display()
            );
            Vec::new()
        }
    }
}

/// `write_curves` for the training loop: a failure is reported on stderr and training goes on.
pub fn update_curves(path: &Path, epochs: &[EpochMetrics]) {
    if let Err(e) = write_curves(path, epochs) {
        eprintln!("warning: could not draw the training curves: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_to_json_writes() {
        let m = EpochMetrics {
            epoch: 3,
            step: 300,
            lr: 1e-3,
            train_loss: 0.5,
            train_accuracy: 0.8,
            val_loss: 0.6,
            val_accuracy: 0.75,
            images_per_second: 1000.0,
            seconds: 2.0,
        };
        let back = EpochMetrics::from_json(&m.to_json()).expect("parse");
        assert_eq!(back.epoch, 3);
        assert_eq!(back.step, 300);
        assert_eq!(back.val_accuracy, 0.75);
        assert!(EpochMetrics::from_json("not json").is_none());
        // NaN is written as null by serde_json
        let nan = EpochMetrics {
            train_loss: f64::NAN,
            ..m
        };
        assert!(EpochMetrics::from_json(&nan.to_json())
            .expect("parse")
            .train_loss
            .is_nan());
    }
}
