//! SVG charts drawn by the app, no chart library: a line chart of one metric
//! over training steps (min/max-decimated to at most [`MAX_POINTS`] drawn
//! points, so thousands of steps stay fast), a log-scale distribution chart
//! (the RNG task's histogram of integers against a uniform target, paper
//! Fig. 2 style), the same metric of several runs overlaid (a group of runs
//! as its mean in a ± std band), and a labelled scatter plot. Each has axes with tick labels,
//! axis titles with units, and an empty state.

use amortize_shared::groups::mean_curve;
use leptos::prelude::*;

/// At most this many points are drawn per series.
pub const MAX_POINTS: usize = 1000;

/// Series colours (readable on light and dark backgrounds).
pub const PALETTE: [&str; 8] = ["#3d6fd8", "#d8563d", "#2f9e5a", "#a05bd6", "#c99a1a", "#1f9bb0", "#d64f9a", "#6b7a8a"];

const W: f64 = 360.0;
const H: f64 = 200.0;
const LEFT: f64 = 54.0;
const RIGHT: f64 = 12.0;
const TOP: f64 = 10.0;
const BOTTOM: f64 = 36.0;

/// Compact number: 3 significant digits, exponent form when very large or small.
pub fn fmt_num(v: f64) -> String {
    if !v.is_finite() {
        return format!("{v}");
    }
    let a = v.abs();
    if a == 0.0 {
        "0".into()
    } else if !(1e-3..1e5).contains(&a) {
        let s = format!("{v:.1e}");
        s.replace(".0e", "e")
    } else {
        let decimals = (2 - a.log10().floor() as i32).clamp(0, 4) as usize;
        let s = format!("{v:.decimals$}");
        if s.contains('.') { s.trim_end_matches('0').trim_end_matches('.').to_string() } else { s }
    }
}

/// About `n` round tick values covering [lo, hi].
pub fn nice_ticks(lo: f64, hi: f64, n: usize) -> Vec<f64> {
    ticks_at_least(lo, hi, n, 0.0)
}

/// Ticks of a step axis: round values at least 1 apart (no step 1.2).
pub fn step_ticks(lo: f64, hi: f64, n: usize) -> Vec<f64> {
    ticks_at_least(lo, hi, n, 1.0)
}

fn ticks_at_least(lo: f64, hi: f64, n: usize, min_step: f64) -> Vec<f64> {
    if !(lo.is_finite() && hi.is_finite()) || hi <= lo {
        return vec![lo];
    }
    let raw = (hi - lo) / n.max(1) as f64;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0].iter().map(|m| m * mag).find(|s| *s >= raw).unwrap_or(10.0 * mag).max(min_step);
    let first = (lo / step).ceil() * step;
    (0..=n + 1).map(|i| first + i as f64 * step).take_while(|v| *v <= hi + step * 1e-9).collect()
}

/// Labels for evenly spaced ticks: the fewest decimals (or, for very large
/// or small values, exponent digits) that tell every tick apart and read
/// back within 1% of the spacing, so a narrow range shows -96.85 / -96.9,
/// not -96.8 twice.
pub fn tick_labels(ticks: &[f64]) -> Vec<(f64, String)> {
    let spacing = ticks.windows(2).map(|w| (w[1] - w[0]).abs()).fold(f64::INFINITY, f64::min);
    let big = ticks.iter().map(|v| v.abs()).fold(0.0, f64::max);
    let exponent = big >= 1e5 || (spacing.is_finite() && spacing < 1e-4);
    let render = |v: f64, d: usize| {
        let t = if exponent { format!("{v:.d$e}") } else { format!("{v:.d$}") };
        if t.trim_start_matches('-').chars().all(|c| c == '0' || c == '.') { "0".to_string() } else { t }
    };
    let close = |d: usize| !spacing.is_finite() || ticks.iter().all(|&v| render(v, d).parse::<f64>().is_ok_and(|r| (r - v).abs() <= spacing * 0.01));
    let d = (0..=8).find(|&d| close(d)).unwrap_or(8);
    ticks.iter().map(|&v| (v, render(v, d))).collect()
}

/// Keeps the first and last point and, per bucket, the lowest and highest
/// one (in x order), so spikes survive: at most `max` points.
pub fn decimate(points: &[(f64, f64)], max: usize) -> Vec<(f64, f64)> {
    if points.len() <= max || max < 4 {
        return points.to_vec();
    }
    let buckets = (max - 2) / 2;
    let inner = &points[1..points.len() - 1];
    let mut out = Vec::with_capacity(max);
    out.push(points[0]);
    for b in 0..buckets {
        let chunk = &inner[b * inner.len() / buckets..(b + 1) * inner.len() / buckets];
        if chunk.is_empty() {
            continue;
        }
        let (mut lo, mut hi) = (0, 0);
        for (i, p) in chunk.iter().enumerate() {
            if p.1 < chunk[lo].1 {
                lo = i;
            }
            if p.1 > chunk[hi].1 {
                hi = i;
            }
        }
        out.push(chunk[lo.min(hi)]);
        if lo != hi {
            out.push(chunk[lo.max(hi)]);
        }
    }
    out.push(points[points.len() - 1]);
    out
}

/// Data → pixel mapping of one chart.
#[derive(Clone, Copy)]
struct Frame {
    x0: f64,
    x1: f64,
    y0: f64,
    y1: f64,
}

impl Frame {
    fn new((x0, x1): (f64, f64), (y0, y1): (f64, f64)) -> Self {
        let widen = |a: f64, b: f64| if b > a { (a, b) } else { (a - 0.5 * a.abs().max(1.0), b + 0.5 * b.abs().max(1.0)) };
        let (x0, x1) = widen(x0, x1);
        let (y0, y1) = widen(y0, y1);
        Frame { x0, x1, y0, y1 }
    }
    fn px(&self, x: f64) -> f64 {
        LEFT + (x - self.x0) / (self.x1 - self.x0) * (W - LEFT - RIGHT)
    }
    fn py(&self, y: f64) -> f64 {
        H - BOTTOM - (y - self.y0) / (self.y1 - self.y0) * (H - TOP - BOTTOM)
    }
}

fn range(vals: impl Iterator<Item = f64>) -> Option<(f64, f64)> {
    vals.filter(|v| v.is_finite()).fold(None, |acc, v| Some(acc.map_or((v, v), |(a, b): (f64, f64)| (a.min(v), b.max(v)))))
}

/// Axes, grid, tick labels and axis titles. `ylabel` formats a y tick.
fn axes(f: Frame, xticks: Vec<(f64, String)>, yticks: Vec<(f64, String)>, xtitle: String, ytitle: String) -> impl IntoView {
    let (bx, by) = (f.px(f.x0), f.py(f.y0));
    view! {
        <g class="axes">
            {yticks.into_iter().map(|(y, label)| {
                let py = f.py(y);
                view! {
                    <line class="grid" x1=LEFT y1=py x2=W - RIGHT y2=py />
                    <text class="tick" x=LEFT - 4.0 y=py + 3.0 text-anchor="end">{label}</text>
                }
            }).collect_view()}
            {xticks.into_iter().map(|(x, label)| {
                let px = f.px(x);
                view! {
                    <line class="tickmark" x1=px y1=by x2=px y2=by + 4.0 />
                    <text class="tick" x=px y=by + 14.0 text-anchor="middle">{label}</text>
                }
            }).collect_view()}
            <line class="axis" x1=LEFT y1=by x2=W - RIGHT y2=by />
            <line class="axis" x1=bx y1=TOP x2=bx y2=by />
            <text class="axis-title" x=(LEFT + W - RIGHT) / 2.0 y=H - 4.0 text-anchor="middle">{xtitle}</text>
            <text class="axis-title" x=12.0 y=(TOP + by) / 2.0 text-anchor="middle"
                transform=format!("rotate(-90 12 {})", (TOP + by) / 2.0)>{ytitle}</text>
        </g>
    }
}

fn path_of(points: &[(f64, f64)], f: Frame) -> String {
    let mut d = String::with_capacity(points.len() * 14);
    let mut pen_up = true;
    for &(x, y) in points {
        if !(x.is_finite() && y.is_finite()) {
            pen_up = true;
            continue;
        }
        d.push_str(&format!("{}{:.1},{:.1}", if pen_up { 'M' } else { 'L' }, f.px(x), f.py(y)));
        pen_up = false;
    }
    d
}

/// One metric over training steps. `points` are (step, value).
#[component]
pub fn LineChart(
    /// Element id (`chart-…`).
    id: String,
    title: String,
    /// Unit of the y axis (shown in its title); empty for none.
    #[prop(optional, into)]
    unit: String,
    #[prop(into)] points: Signal<Vec<(f64, f64)>>,
    #[prop(default = 0)] color: usize,
    /// Moving-average weight of the drawn line ([`smooth`]); the caption's
    /// latest value stays the raw one.
    #[prop(optional, into)]
    smoothing: Option<Signal<f64>>,
) -> impl IntoView {
    let ytitle = if unit.is_empty() { title.clone() } else { format!("{title} ({unit})") };
    let latest = move || points.with(|p| p.last().map(|(_, y)| fmt_num(*y)).unwrap_or_else(|| "—".into()));
    let body = move || {
        let w = smoothing.map_or(0.0, |s| s.get());
        let pts = points.with(|p| decimate(&smooth(p, w), MAX_POINTS));
        let (Some(xr), Some(yr)) = (range(pts.iter().map(|p| p.0)), range(pts.iter().map(|p| p.1))) else {
            return view! { <p class="chart-empty">"No data yet."</p> }.into_any();
        };
        let f = Frame::new(xr, yr);
        let yticks = tick_labels(&nice_ticks(f.y0, f.y1, 4));
        let d = path_of(&pts, f);
        let (xt, yt) = (tick_labels(&step_ticks(f.x0, f.x1, 5)), ytitle.clone());
        view! {
            <svg viewBox=format!("0 0 {W} {H}") role="img" aria-label=ytitle.clone()>
                {axes(f, xt, yticks, "step".into(), yt)}
                <path class="series" d=d stroke=PALETTE[color % PALETTE.len()] />
            </svg>
        }
        .into_any()
    };
    view! {
        <figure class="chart" id=id data-test="chart">
            <figcaption>{title}" "<span class="latest" title="latest value (steps recorded)">{latest}
                <span class="count">{move || format!(" · {} steps", points.with(Vec::len))}</span></span></figcaption>
            {body}
        </figure>
    }
}

/// One run's series in a [`MultiLineChart`]: (step, value) points; or a
/// group's ([`Curve::line`]): the mean, drawn in a shaded band.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Curve {
    /// What the legend and the path's `data-label` name it by.
    pub label: String,
    pub color: usize,
    pub points: Vec<(f64, f64)>,
    /// (step, low, high) under the line (mean ± std of a group); empty for one run.
    pub band: Vec<(f64, f64, f64)>,
}

impl Curve {
    /// A line of one run's points, or of several's mean at the steps all of
    /// them have, in a band of ± their standard deviation.
    pub fn line(label: String, color: usize, members: &[Vec<(f64, f64)>]) -> Curve {
        if let [one] = members {
            return Curve { label, color, points: one.clone(), band: Vec::new() };
        }
        let m = mean_curve(&members.iter().map(Vec::as_slice).collect::<Vec<_>>());
        Curve {
            label,
            color,
            points: m.iter().map(|(x, s)| (*x, s.mean)).collect(),
            band: m.iter().map(|(x, s)| (*x, s.mean - s.std, s.mean + s.std)).collect(),
        }
    }
}

/// Every `k`-th of `band` and its last, so at most about `max` are drawn.
fn thin<T: Copy>(band: &[T], max: usize) -> Vec<T> {
    if band.len() <= max || max == 0 {
        return band.to_vec();
    }
    let k = band.len().div_ceil(max);
    let mut out: Vec<T> = band.iter().step_by(k).copied().collect();
    if !(band.len() - 1).is_multiple_of(k) {
        out.push(band[band.len() - 1]);
    }
    out
}

/// A closed outline of a band: along its highs, back along its lows.
fn band_path(band: &[(f64, f64, f64)], f: Frame) -> String {
    let pts: Vec<&(f64, f64, f64)> = band.iter().filter(|p| p.0.is_finite() && p.1.is_finite() && p.2.is_finite()).collect();
    if pts.len() < 2 {
        return String::new();
    }
    let mut d = String::with_capacity(pts.len() * 28);
    for (i, p) in pts.iter().enumerate() {
        d.push_str(&format!("{}{:.1},{:.1}", if i == 0 { 'M' } else { 'L' }, f.px(p.0), f.py(p.2)));
    }
    for p in pts.iter().rev() {
        d.push_str(&format!("L{:.1},{:.1}", f.px(p.0), f.py(p.1)));
    }
    d.push('Z');
    d
}

/// Exponential moving average with weight `w` on the past (TensorBoard's
/// smoothing, debiased so the first points are not pulled towards 0); `w`
/// 0 leaves the points as they are. Non-finite values are skipped.
pub fn smooth(points: &[(f64, f64)], w: f64) -> Vec<(f64, f64)> {
    if w <= 0.0 {
        return points.to_vec();
    }
    let (mut avg, mut weight) = (0.0, 0.0);
    points
        .iter()
        .map(|&(x, y)| {
            if !y.is_finite() {
                return (x, y);
            }
            avg = w * avg + (1.0 - w) * y;
            weight = w * weight + (1.0 - w);
            (x, avg / weight)
        })
        .collect()
}

/// The moving-average weights offered (0: raw).
pub const SMOOTHING: [f64; 4] = [0.0, 0.6, 0.9, 0.99];

/// A "Smoothing" select over [`SMOOTHING`] bound to `weight`.
#[component]
pub fn SmoothingSelect(id: &'static str, weight: RwSignal<f64>) -> impl IntoView {
    view! {
        <div class="field small inline">
            <label for=id>"Smoothing"</label>
            <select id=id on:change=move |ev| weight.set(event_target_value(&ev).parse().unwrap_or(0.0))>
                {SMOOTHING.iter().map(|w| view! {
                    <option value=w.to_string() selected=move || weight.get() == *w>{if *w == 0.0 { "none".to_string() } else { w.to_string() }}</option>
                }).collect_view()}
            </select>
        </div>
    }
}

/// One metric of several runs over training steps, a colour per run; the
/// legend is the caller's (shared by the charts of a page).
#[component]
pub fn MultiLineChart(id: String, title: String, #[prop(optional, into)] unit: String, #[prop(into)] curves: Signal<Vec<Curve>>) -> impl IntoView {
    let ytitle = if unit.is_empty() { title.clone() } else { format!("{title} ({unit})") };
    let body = move || {
        let curves: Vec<Curve> = curves.with(|c| c.iter().map(|c| Curve { points: decimate(&c.points, MAX_POINTS), band: thin(&c.band, MAX_POINTS), ..c.clone() }).collect());
        let all = || curves.iter().flat_map(|c| c.points.iter());
        let bands = || curves.iter().flat_map(|c| c.band.iter()).flat_map(|b| [b.1, b.2]);
        let (Some(xr), Some(yr)) = (range(all().map(|p| p.0)), range(all().map(|p| p.1).chain(bands()))) else {
            return view! { <p class="chart-empty">"No steps yet."</p> }.into_any();
        };
        let f = Frame::new(xr, yr);
        let yticks = tick_labels(&nice_ticks(f.y0, f.y1, 4));
        view! {
            <svg viewBox=format!("0 0 {W} {H}") role="img" aria-label=ytitle.clone()>
                {axes(f, tick_labels(&step_ticks(f.x0, f.x1, 5)), yticks, "step".into(), ytitle.clone())}
                {curves.iter().filter(|c| !c.band.is_empty()).map(|c| view! {
                    <path class="band" data-band=c.label.clone() d=band_path(&c.band, f) fill=PALETTE[c.color % PALETTE.len()] />
                }).collect_view()}
                {curves.into_iter().map(|c| view! {
                    <path class="series" class:mean=!c.band.is_empty() data-label=c.label d=path_of(&c.points, f) stroke=PALETTE[c.color % PALETTE.len()] />
                }).collect_view()}
            </svg>
        }
        .into_any()
    };
    view! {
        <figure class="chart" id=id data-test="curve">
            <figcaption>{title}</figcaption>
            {body}
        </figure>
    }
}

/// One distribution over 0..=100 of a source, for [`DistributionChart`].
#[derive(Clone, Debug, PartialEq)]
pub struct Distribution {
    pub label: String,
    /// Probability of each integer 0..=100 (101 values).
    pub probs: Vec<f64>,
    /// Samples that parsed as an integer in range, and all samples.
    pub valid: usize,
    pub total: usize,
}

/// Empirical distributions of integers 0..=100 against the uniform target, log-scale y.
#[component]
pub fn DistributionChart(#[prop(into)] series: Signal<Vec<Distribution>>) -> impl IntoView {
    let body = move || {
        let series = series.get();
        let target = 1.0 / 101.0;
        let floor = series.iter().flat_map(|s| s.probs.iter().copied()).filter(|p| *p > 0.0).fold(target, f64::min);
        let lo = floor.log10().floor().min(-3.0);
        let f = Frame::new((0.0, 100.0), (lo, 0.0));
        let yticks = (lo as i32..=0).map(|e| (e as f64, format!("1e{e}"))).collect();
        let ty = f.py(target.log10());
        view! {
            <svg viewBox=format!("0 0 {W} {H}") role="img" aria-label="distribution of sampled integers">
                {axes(f, tick_labels(&[0.0, 20.0, 40.0, 60.0, 80.0, 100.0]), yticks, "sampled integer".into(), "probability (log)".into())}
                <line class="target" x1=LEFT y1=ty x2=W - RIGHT y2=ty />
                {series.iter().enumerate().map(|(i, s)| {
                    let pts: Vec<(f64, f64)> = s.probs.iter().enumerate()
                        .map(|(n, p)| (n as f64, if *p > 0.0 { p.log10() } else { f64::NAN })).collect();
                    let color = PALETTE[i % PALETTE.len()];
                    view! {
                        <path class="series thin" d=path_of(&pts, f) stroke=color />
                        {pts.iter().filter(|p| p.1.is_finite()).map(|&(x, y)| view! {
                            <circle cx=f.px(x) cy=f.py(y) r="1.6" fill=color />
                        }).collect_view()}
                    }
                }).collect_view()}
            </svg>
            <ul class="legend">
                <li><span class="swatch target-swatch"></span>"uniform target (1/101)"</li>
                {series.iter().enumerate().map(|(i, s)| {
                    let pct = if s.total > 0 { 100.0 * s.valid as f64 / s.total as f64 } else { 0.0 };
                    view! {
                        <li><span class="swatch" style=format!("background:{}", PALETTE[i % PALETTE.len()])></span>
                        {format!("{} — {} of {} samples valid ({pct:.0}%)", s.label, s.valid, s.total)}</li>
                    }
                }).collect_view()}
            </ul>
        }
    };
    view! { <figure class="chart wide" id="chart-distribution">{body}</figure> }
}

/// A labelled point of a [`Scatter`] chart, with ± standard deviations.
#[derive(Clone, Debug, PartialEq)]
pub struct ScatterPoint {
    pub label: String,
    /// Index into [`PALETTE`].
    pub color: usize,
    pub x: f64,
    pub y: f64,
    pub x_std: f64,
    pub y_std: f64,
}

/// A scatter of labelled points with error bars; `xticks`, when given, are
/// the x axis's ticks (a categorical axis), else round numbers.
#[component]
pub fn Scatter(
    id: String,
    xtitle: String,
    ytitle: String,
    #[prop(into)] points: Signal<Vec<ScatterPoint>>,
    #[prop(optional_no_strip)] xticks: Option<Vec<(f64, String)>>,
) -> impl IntoView {
    let body = move || {
        let pts = points.get();
        let (Some(xr), Some(yr)) = (
            range(pts.iter().flat_map(|p| [p.x - p.x_std, p.x + p.x_std])),
            range(pts.iter().flat_map(|p| [p.y - p.y_std, p.y + p.y_std])),
        ) else {
            return view! { <p class="chart-empty">"Nothing to plot."</p> }.into_any();
        };
        // A tenth of the range each side; points all at one value get ± half of it (or 0.5).
        let pad = |(a, b): (f64, f64)| {
            let m = if b > a { (b - a) * 0.1 } else { 0.5 * a.abs().max(1.0) };
            (a - m, b + m)
        };
        let f = Frame::new(pad(xr), pad(yr));
        let yticks = tick_labels(&nice_ticks(f.y0, f.y1, 4));
        view! {
            <svg viewBox=format!("0 0 {W} {H}") role="img" aria-label=format!("{ytitle} against {xtitle}")>
                {axes(f, xticks.clone().unwrap_or_else(|| tick_labels(&nice_ticks(f.x0, f.x1, 4))), yticks, xtitle.clone(), ytitle.clone())}
                {pts.into_iter().map(|p| {
                    let (cx, cy) = (f.px(p.x), f.py(p.y));
                    let color = PALETTE[p.color % PALETTE.len()];
                    // Labels right of the middle grow leftwards, so they stay inside.
                    let (lx, anchor) = if cx > W / 2.0 { (cx - 5.0, "end") } else { (cx + 5.0, "start") };
                    view! {
                        <line class="errbar" x1=f.px(p.x - p.x_std) y1=cy x2=f.px(p.x + p.x_std) y2=cy stroke=color />
                        <line class="errbar" x1=cx y1=f.py(p.y - p.y_std) x2=cx y2=f.py(p.y + p.y_std) stroke=color />
                        <circle cx=cx cy=cy r="3.5" fill=color />
                        <text class="point-label" x=lx y=cy - 5.0 text-anchor=anchor>{p.label}</text>
                    }
                }).collect_view()}
            </svg>
        }
        .into_any()
    };
    view! { <figure class="chart wide" id=id>{body}</figure> }
}
