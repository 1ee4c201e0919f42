//! Renders `index.html` of the golden report in headless Chromium and checks what a reader
//! would see: the verdict first and visible, every chart present, decoded and drawn
//! (non-blank pixels inside each chart's box on the screenshot).
//!
//! Skips, with the reason printed, when `/usr/bin/chromium` is absent (Debian packages
//! `chromium` and `fonts-dejavu-core` provide it in CI).

use std::path::{Path, PathBuf};
use std::process::Command;

use ctxcost_reports::charts::ChartKind;
use ctxcost_reports::report::{self, ReportOptions};

const CHROMIUM: &str = "/usr/bin/chromium";
const WIDTH: u32 = 1300;

/// Appended to a copy of the report (never to the report itself): records where the verdict
/// and each chart landed, and whether each image decoded, as an attribute the DOM dump shows.
const PROBE: &str = r#"<script>
window.addEventListener('load', function () {
  var boxes = [];
  var add = function (id, el, img) {
    if (!el) { boxes.push({id: id, missing: true}); return; }
    var r = el.getBoundingClientRect();
    boxes.push({id: id, x: r.left + window.scrollX, y: r.top + window.scrollY, w: r.width, h: r.height,
                decoded: img ? (img.complete && img.naturalWidth > 0) : true,
                visible: getComputedStyle(el).visibility === 'visible' && getComputedStyle(el).display !== 'none'});
  };
  add('verdict', document.getElementById('verdict'), null);
  document.querySelectorAll('figure').forEach(function (f) { var i = f.querySelector('img'); add(f.id, i, i); });
  document.body.setAttribute('data-boxes', JSON.stringify(boxes));
});
</script>"#;

fn chromium(profile: &Path, extra: &[String]) -> std::process::Output {
    let mut cmd = Command::new("timeout");
    cmd.arg("120").arg(CHROMIUM).args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        "--force-device-scale-factor=1",
        "--run-all-compositor-stages-before-draw",
        "--virtual-time-budget=5000",
    ]);
    cmd.arg(format!("--user-data-dir={}", profile.display()));
    cmd.args(extra);
    cmd.output().expect("chromium runs")
}

#[derive(Debug)]
struct Box2 {
    id: String,
    x: f64,
    y: f64,
    w: f64,
    h: f64,
    decoded: bool,
    visible: bool,
}

fn parse_boxes(dom: &str) -> Vec<Box2> {
    let start = dom.find("data-boxes=\"").expect("the probe ran and left its boxes in the DOM") + "data-boxes=\"".len();
    let end = start + dom[start..].find('"').unwrap();
    let json = dom[start..end].replace("&quot;", "\"").replace("&amp;", "&");
    let v: serde_json::Value = serde_json::from_str(&json).expect("boxes are JSON");
    v.as_array()
        .unwrap()
        .iter()
        .map(|b| {
            assert!(b.get("missing").is_none(), "element {} missing from the page", b["id"]);
            Box2 {
                id: b["id"].as_str().unwrap().to_string(),
                x: b["x"].as_f64().unwrap(),
                y: b["y"].as_f64().unwrap(),
                w: b["w"].as_f64().unwrap(),
                h: b["h"].as_f64().unwrap(),
                decoded: b["decoded"].as_bool().unwrap(),
                visible: b["visible"].as_bool().unwrap(),
            }
        })
        .collect()
}

/// Fraction of non-white pixels and number of distinct colours inside a box of an RGB(A) PNG.
fn ink(png_path: &Path, b: &Box2) -> (f64, usize) {
    let decoder = png::Decoder::new(std::fs::File::open(png_path).unwrap());
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size()];
    let info = reader.next_frame(&mut buf).unwrap();
    let ch = match info.color_type {
        png::ColorType::Rgba => 4,
        png::ColorType::Rgb => 3,
        other => panic!("unexpected PNG colour type {other:?}"),
    };
    let (w, h) = (info.width as i64, info.height as i64);
    let (x0, y0) = ((b.x as i64 + 2).max(0), (b.y as i64 + 2).max(0));
    let (x1, y1) = (((b.x + b.w) as i64 - 2).min(w), ((b.y + b.h) as i64 - 2).min(h));
    assert!(x1 > x0 && y1 > y0, "box {} ({:?}) lies outside the {w}x{h} screenshot", b.id, b);
    let mut inked = 0u64;
    let mut colours = std::collections::HashSet::new();
    for y in y0..y1 {
        for x in x0..x1 {
            let i = ((y * w + x) as usize) * ch;
            let px = (buf[i], buf[i + 1], buf[i + 2]);
            if px.0 < 240 || px.1 < 240 || px.2 < 240 {
                inked += 1;
            }
            if colours.len() < 1000 {
                colours.insert(px);
            }
        }
    }
    (inked as f64 / ((x1 - x0) * (y1 - y0)) as f64, colours.len())
}

#[test]
fn report_renders_in_headless_chromium() {
    if !Path::new(CHROMIUM).exists() {
        println!("SKIPPED report_renders_in_headless_chromium: {CHROMIUM} not found (install Debian's `chromium` package to run it)");
        return;
    }
    let tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("chromium-report");
    let _ = std::fs::remove_dir_all(&tmp);
    let out = tmp.join("report");
    let fixture = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/golden.jsonl");
    let r = report::build(&[fixture], &ReportOptions::default()).unwrap();
    report::write(&r, &out).unwrap();

    let html = std::fs::read_to_string(out.join("index.html")).unwrap();
    let probe = out.join("probe.html");
    std::fs::write(&probe, html.replace("</body>", &format!("{PROBE}</body>"))).unwrap();
    let url = format!("file://{}", probe.display());
    let profile = tmp.join("profile");

    // 1. The DOM after layout: verdict text, chart elements and where they are.
    let dom = chromium(&profile, &[format!("--window-size={WIDTH},1000"), "--dump-dom".into(), url.clone()]);
    let dom_text = String::from_utf8_lossy(&dom.stdout).to_string();
    assert!(dom.status.success(), "chromium --dump-dom failed: {}", String::from_utf8_lossy(&dom.stderr));
    assert!(dom_text.contains("id=\"verdict\""), "no verdict section in the DOM");
    assert!(dom_text.contains("holds from about 3.4K"), "verdict sentence missing from the DOM");
    let boxes = parse_boxes(&dom_text);
    let verdict = boxes.iter().find(|b| b.id == "verdict").unwrap();
    assert!(verdict.visible && verdict.h > 50.0 && verdict.w > 300.0, "{verdict:?}");
    assert!(verdict.y < 200.0, "the verdict must be at the top of the page: {verdict:?}");
    for kind in ChartKind::ALL {
        let b = boxes.iter().find(|b| b.id == kind.id()).unwrap_or_else(|| panic!("chart {} not in the page", kind.id()));
        assert!(b.decoded, "chart {} did not decode", kind.id());
        assert!(b.visible && b.w > 600.0 && b.h > 200.0, "chart {} too small or hidden: {b:?}", kind.id());
        assert!(b.y > verdict.y + verdict.h - 1.0, "chart {} above the verdict", kind.id());
    }

    // 2. A screenshot tall enough for every chart: each chart box must hold drawn pixels.
    let bottom = boxes.iter().map(|b| b.y + b.h).fold(0f64, f64::max).ceil() as u32 + 40;
    let shot = tmp.join("screenshot.png");
    let s = chromium(&profile, &[format!("--window-size={WIDTH},{bottom}"), format!("--screenshot={}", shot.display()), url]);
    assert!(s.status.success() && shot.exists(), "chromium --screenshot failed: {}", String::from_utf8_lossy(&s.stderr));
    for b in &boxes {
        let (frac, colours) = ink(&shot, b);
        println!("{}: {:.1}% inked, {} colours, box {:.0}x{:.0} at ({:.0}, {:.0})", b.id, 100.0 * frac, colours, b.w, b.h, b.x, b.y);
        assert!(frac > 0.02, "{} looks blank on the screenshot ({:.2}% inked)", b.id, 100.0 * frac);
        if b.id != "verdict" {
            assert!(colours >= 8, "{} has only {colours} colours: not a drawn chart", b.id);
        }
    }
}
