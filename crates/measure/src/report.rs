//! Reports: aligned tables in the form of the upstream cover letter (setup rows, MB columns,
//! the reduction in percent), and grouped bar charts as PNG.

use crate::analyze::Analysis;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};
use std::path::Path;

/// Bytes in a MiB: every table here is in MiB.
pub const MB: f64 = 1024.0 * 1024.0;

/// Bytes as MiB with one decimal.
pub fn mb(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / MB)
}

/// "−33 %"-style change from `without` to `with` (negative = saved).
pub fn change(without: u64, with: u64) -> String {
    if without == 0 {
        return "–".into();
    }
    let pct = (with as f64 - without as f64) / without as f64 * 100.0;
    format!("{pct:+.0} %").replace('-', "−")
}

/// A text table: a header row and data rows, columns aligned, numbers right-aligned.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Table {
    pub headers: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column headers.
    pub fn new(headers: &[&str]) -> Table {
        Table {
            headers: headers.iter().map(|s| s.to_string()).collect(),
            rows: Vec::new(),
        }
    }

    /// Append a row (missing cells are blank, extra ones dropped).
    pub fn row(&mut self, cells: Vec<String>) {
        let mut cells = cells;
        cells.resize(self.headers.len(), String::new());
        self.rows.push(cells);
    }

    /// Render as a Markdown table (readable on a terminal and pasteable into a README).
    pub fn render(&self) -> String {
        let n = self.headers.len();
        let width = |i: usize| {
            self.rows
                .iter()
                .map(|r| r[i].chars().count())
                .chain([self.headers[i].chars().count(), 3])
                .max()
                .unwrap_or(3)
        };
        let widths: Vec<usize> = (0..n).map(width).collect();
        let numeric = |i: usize| {
            !self.rows.is_empty()
                && self.rows.iter().all(|r| {
                    let c = r[i].trim_start_matches(['+', '−', '-']);
                    c.is_empty() || c == "–" || c.starts_with(|ch: char| ch.is_ascii_digit())
                })
        };
        let cell = |s: &str, i: usize| {
            let pad = widths[i] - s.chars().count();
            if numeric(i) {
                format!("{}{s}", " ".repeat(pad))
            } else {
                format!("{s}{}", " ".repeat(pad))
            }
        };
        let line = |cells: Vec<String>| format!("| {} |\n", cells.join(" | "));
        let mut out = line((0..n).map(|i| cell(&self.headers[i], i)).collect());
        out += &line(
            (0..n)
                .map(|i| {
                    if numeric(i) {
                        format!("{}:", "-".repeat(widths[i] - 1))
                    } else {
                        "-".repeat(widths[i])
                    }
                })
                .collect(),
        );
        for r in &self.rows {
            out += &line((0..n).map(|i| cell(&r[i], i)).collect());
        }
        out
    }
}

/// Bytes of `pages` pages.
fn pages_mb(pages: u64, page_size: u64) -> String {
    mb(pages * page_size)
}

/// The text report of an [`Analysis`]: per image, the page cache prediction in the upstream
/// form, the biggest contributors and the top-level directories.
pub fn analysis_text(a: &Analysis) -> String {
    let ps = a.page_size;
    let mut out = String::new();
    let mut t = Table::new(&[
        "image",
        "files",
        "MiB",
        "shared MiB",
        "shared",
        "fingerprints",
        "file pages MiB",
    ]);
    for i in &a.images {
        let fp = match (i.fingerprinted_files, i.hashed_files) {
            (_, 0) => "stored".to_string(),
            (0, _) => "none (hashed here)".to_string(),
            (s, h) => format!("{s} stored, {h} hashed"),
        };
        t.row(vec![
            i.name.clone(),
            i.files.to_string(),
            mb(i.bytes),
            mb(i.shared_bytes),
            percent(i.shared_bytes, i.bytes),
            fp,
            pages_mb(i.pages, ps),
        ]);
    }
    out += &t.render();
    out += "\nPredicted page cache after reading every file of every image:\n";
    out += &prediction_table(a).render();
    out += &format!(
        "Read all files, page cache MiB without → with sharing: {} → {} ({})\n",
        pages_mb(a.kernel_pages, ps),
        pages_mb(a.pages_with, ps),
        change(a.kernel_pages, a.pages_with)
    );
    if !a.top_shared.is_empty() {
        out += "\nBiggest shared contents (what sharing saves):\n";
        let mut t = Table::new(&["path", "size MiB", "copies", "images", "saved MiB"]);
        for c in &a.top_shared {
            t.row(vec![
                c.path.clone(),
                mb(c.size),
                c.copies.to_string(),
                c.images.to_string(),
                pages_mb(c.saved_pages, ps),
            ]);
        }
        out += &t.render();
    }
    if !a.top_unshared.is_empty() {
        out += "\nBiggest unshared files (one copy each, whatever the domain):\n";
        let mut t = Table::new(&["image", "path", "page cache MiB"]);
        for c in &a.top_unshared {
            t.row(vec![c.image.clone(), c.path.clone(), pages_mb(c.pages, ps)]);
        }
        out += &t.render();
    }
    out += "\nFile pages by top-level directory (all images):\n";
    let mut t = Table::new(&["dir", "files", "MiB", "without MiB", "with MiB", "change"]);
    for d in &a.by_dir {
        t.row(vec![
            d.dir.clone(),
            d.files.to_string(),
            mb(d.bytes),
            pages_mb(d.pages_without, ps),
            pages_mb(d.pages_with, ps),
            change(d.pages_without, d.pages_with),
        ]);
    }
    out += &t.render();
    if a.dirs_left_out > 0 {
        out += &format!("… and {} more directories\n", a.dirs_left_out);
    }
    let unfp: Vec<&str> = a
        .images
        .iter()
        .filter(|i| i.hashed_files > 0)
        .map(|i| i.name.as_str())
        .collect();
    if !unfp.is_empty() {
        out += &format!(
            "\nNote: {} lack fingerprints; their content was hashed here. Sharing needs them: \
             build with `erofs-share mkfs` (fingerprints are on by default).\n",
            unfp.join(", ")
        );
    }
    out
}

/// Setup labels shared with the benchmarks' tables.
pub const KERNEL: &str = "kernel erofs, loop --direct-io=on, no sharing";
pub const NO_SHARE: &str = "erofs-share --no-share";
pub const ONE_DOMAIN: &str = "erofs-share, one domain";
pub const ONE_DOMAIN_FUSE: &str = "erofs-share, one domain, FUSE front";
pub const ONE_DOMAIN_TRUSTED: &str = "erofs-share, one trusted domain (no verification)";
pub const NO_SHARE_FUSE: &str = "erofs-share --no-share, FUSE front";
pub const IDEAL: &str = "ideal: unique file content";

/// The pages `a` predicts for the setup called `label` (0 for an unknown label).
fn predicted_pages(a: &Analysis, label: &str) -> u64 {
    match label {
        KERNEL => a.kernel_pages,
        NO_SHARE => a.pages_without,
        ONE_DOMAIN | ONE_DOMAIN_TRUSTED => a.pages_with,
        NO_SHARE_FUSE => a.fuse_pages_without,
        ONE_DOMAIN_FUSE => a.fuse_pages_with,
        IDEAL => a.file_pages_with,
        _ => 0,
    }
}

/// The prediction in the rows of `bench memory`'s table.
pub fn prediction_table(a: &Analysis) -> Table {
    let ps = a.page_size;
    let mut t = Table::new(&["setup", "page cache MiB", "change"]);
    for label in [KERNEL, NO_SHARE, ONE_DOMAIN, ONE_DOMAIN_FUSE, IDEAL] {
        let pages = predicted_pages(a, label);
        t.row(vec![
            label.into(),
            pages_mb(pages, ps),
            change(a.kernel_pages, pages),
        ]);
    }
    t
}

/// The chart of a `bench memory` run: one group per setup, the measured page cache growth
/// beside what `analyze` predicted for it. `measured` holds (setup label, bytes) rows; labels
/// are matched to the prediction by the names above.
pub fn memory_chart(title: &str, measured: &[(String, u64)], predicted: &Analysis) -> BarChart {
    let ps = predicted.page_size;
    let predict = |label: &str| (predicted_pages(predicted, label) * ps) as f64 / MB;
    let short = |label: &str| -> String {
        match label {
            KERNEL => "kernel erofs".into(),
            IDEAL => "ideal".into(),
            other => other.into(),
        }
    };
    BarChart {
        title: title.into(),
        y_label: "page cache after reading every file (MiB)".into(),
        groups: measured.iter().map(|(l, _)| short(l)).collect(),
        series: vec![
            (
                "measured (bench memory)".into(),
                measured.iter().map(|(_, b)| *b as f64 / MB).collect(),
            ),
            (
                "predicted (analyze)".into(),
                measured.iter().map(|(l, _)| predict(l)).collect(),
            ),
        ],
    }
}

/// `part` of `whole` in percent.
pub fn percent(part: u64, whole: u64) -> String {
    if whole == 0 {
        "–".into()
    } else {
        format!("{:.0} %", part as f64 * 100.0 / whole as f64)
    }
}

/// A plot could not be drawn or written.
#[derive(Debug, thiserror::Error)]
#[error("plot {path}: {message}")]
pub struct PlotError {
    pub path: String,
    pub message: String,
}

/// A grouped bar chart: one group per label on the x axis, one bar per series in each group.
#[derive(Debug, Clone, PartialEq)]
pub struct BarChart {
    pub title: String,
    pub y_label: String,
    pub groups: Vec<String>,
    /// (series name, one value per group).
    pub series: Vec<(String, Vec<f64>)>,
}

const FONT: &str = "erofs-share-sans";

fn register_font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // The embedded DejaVu Sans: no dependency on the host's fonts.
        let _ = plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular());
    });
}

const PALETTE: [RGBColor; 6] = [
    RGBColor(0x4e, 0x79, 0xa7),
    RGBColor(0xf2, 0x8e, 0x2b),
    RGBColor(0x59, 0xa1, 0x4f),
    RGBColor(0xb0, 0x7a, 0xa1),
    RGBColor(0xe1, 0x57, 0x59),
    RGBColor(0x76, 0xb7, 0xb2),
];

impl BarChart {
    /// Draw to a PNG file of `width`×`height` pixels.
    pub fn write_png(&self, path: &Path, width: u32, height: u32) -> Result<(), PlotError> {
        let err = |message: String| PlotError {
            path: path.display().to_string(),
            message,
        };
        if self.groups.is_empty() || self.series.is_empty() {
            return Err(err("nothing to plot".into()));
        }
        if let Some((name, v)) = self
            .series
            .iter()
            .find(|(_, v)| v.len() != self.groups.len())
        {
            return Err(err(format!(
                "series {name} has {} values for {} groups",
                v.len(),
                self.groups.len()
            )));
        }
        if self
            .series
            .iter()
            .flat_map(|(_, v)| v)
            .any(|x| !x.is_finite() || *x < 0.0)
        {
            return Err(err("values must be finite and not negative".into()));
        }
        register_font();
        self.draw(path, width, height)
            .map_err(|e| err(e.to_string()))
    }

    fn draw(&self, path: &Path, width: u32, height: u32) -> Result<(), Box<dyn std::error::Error>> {
        let root = BitMapBackend::new(path, (width, height)).into_drawing_area();
        root.fill(&WHITE)?;
        let max = self
            .series
            .iter()
            .flat_map(|(_, v)| v.iter().copied())
            .fold(0.0f64, f64::max);
        // Headroom above the bars for their values and the legend.
        let top = if max > 0.0 {
            max * (1.2 + 0.07 * self.series.len() as f64)
        } else {
            1.0
        };
        let n_groups = self.groups.len();
        let n_series = self.series.len();
        let mut chart = ChartBuilder::on(&root)
            .caption(&self.title, (FONT, 26))
            .margin(16)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(0f64..n_groups as f64, 0f64..top)?;
        let groups = self.groups.clone();
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(n_groups * 2 + 1)
            .x_label_formatter(&|x| {
                // Label only group centres.
                let i = x.floor() as usize;
                if (x - i as f64 - 0.5).abs() < 1e-6 && i < groups.len() {
                    groups[i].clone()
                } else {
                    String::new()
                }
            })
            .y_label_formatter(&|y| format!("{y:.0}"))
            .light_line_style(WHITE)
            .y_desc(&self.y_label)
            .label_style((FONT, 16))
            .axis_desc_style((FONT, 18))
            .draw()?;
        let slot = 0.8 / n_series as f64;
        // Small values keep a decimal.
        let decimals = if max < 100.0 { 1 } else { 0 };
        for (s, (name, values)) in self.series.iter().enumerate() {
            let color = PALETTE[s % PALETTE.len()];
            chart
                .draw_series(values.iter().enumerate().map(|(g, &v)| {
                    let x0 = g as f64 + 0.1 + s as f64 * slot;
                    Rectangle::new([(x0, 0.0), (x0 + slot * 0.92, v)], color.filled())
                }))?
                .label(name.clone())
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 6), (x + 14, y + 6)], color.filled())
                });
            chart.draw_series(values.iter().enumerate().map(|(g, &v)| {
                let x = g as f64 + 0.1 + (s as f64 + 0.46) * slot;
                Text::new(
                    format!("{v:.decimals$}"),
                    (x, v + top * 0.01),
                    (FONT, 14)
                        .into_font()
                        .color(&BLACK)
                        .pos(Pos::new(HPos::Center, VPos::Bottom)),
                )
            }))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .label_font((FONT, 16))
            .draw()?;
        root.present()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns() {
        let mut t = Table::new(&["setup", "MB"]);
        t.row(vec!["kernel".into(), "241.0".into()]);
        t.row(vec!["one domain".into(), "163.2".into()]);
        assert_eq!(
            t.render(),
            "| setup      |    MB |\n\
             | ---------- | ----: |\n\
             | kernel     | 241.0 |\n\
             | one domain | 163.2 |\n"
        );
    }

    #[test]
    fn change_is_signed_percent() {
        assert_eq!(change(241, 163), "−32 %");
        assert_eq!(change(100, 100), "+0 %");
        assert_eq!(change(0, 5), "–");
    }

    #[test]
    fn memory_chart_pairs_each_row_with_its_prediction() {
        let a = crate::analyze::analyze(&[], 4096);
        let a = Analysis {
            kernel_pages: 256,
            pages_without: 128,
            pages_with: 64,
            fuse_pages_without: 120,
            fuse_pages_with: 60,
            file_pages_with: 32,
            ..a
        };
        let rows: Vec<(String, u64)> = [(KERNEL, 3), (NO_SHARE, 2), (ONE_DOMAIN, 1), (IDEAL, 0)]
            .iter()
            .map(|(l, mib)| (l.to_string(), mib << 20))
            .collect();
        let c = memory_chart("t", &rows, &a);
        assert_eq!(c.groups[0], "kernel erofs");
        assert_eq!(c.series[0].1, vec![3.0, 2.0, 1.0, 0.0]);
        assert_eq!(c.series[1].1, vec![1.0, 0.5, 0.25, 0.125]);
    }

    #[test]
    fn bar_chart_renders_a_png() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("chart.png");
        let chart = BarChart {
            title: "page cache after reading every file".into(),
            y_label: "MiB".into(),
            groups: vec!["redis".into(), "nginx".into()],
            series: vec![
                ("without sharing".into(), vec![241.0, 390.0]),
                ("with sharing".into(), vec![163.0, 219.0]),
            ],
        };
        chart.write_png(&path, 800, 500).unwrap();
        let img = image::open(&path).unwrap().to_rgb8();
        assert_eq!(img.dimensions(), (800, 500));
        // Both series' bars are drawn, and text (dark pixels beyond the axes) is too.
        let count = |c: RGBColor| img.pixels().filter(|p| p.0 == [c.0, c.1, c.2]).count();
        assert!(count(PALETTE[0]) > 2000, "first series");
        assert!(count(PALETTE[1]) > 1000, "second series");
        let dark = img.pixels().filter(|p| p.0.iter().all(|&v| v < 60)).count();
        assert!(dark > 500, "labels and axes: {dark} dark pixels");
        let bad = BarChart {
            series: vec![("x".into(), vec![1.0])],
            ..chart
        };
        assert!(bad.write_png(&path, 800, 500).is_err());
    }
}
