//! timm's transforms against PIL/torchvision/timm's own numbers
//! (tests/fixtures/transforms.safetensors, made by scripts/make_transform_fixture.py):
//! resizes and resized crops must match PIL's bytes exactly, the eval and train pipelines
//! torch's floats, and the RandomResizedCrop box sampler timm's statistics.

use safetensors::{Dtype, SafeTensors};
use vit_wgpu::data::transforms::{self, CropBox, CropRange, Interpolation, Pixels};

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/transforms.safetensors"
);
const INTERPS: [(&str, Interpolation); 2] = [
    ("bilinear", Interpolation::Bilinear),
    ("bicubic", Interpolation::Bicubic),
];

fn fixture() -> Vec<u8> {
    std::fs::read(FIXTURE).unwrap_or_else(|e| {
        panic!("{FIXTURE}: {e} (run scripts/make_transform_fixture.py to make it)")
    })
}

fn pixels(st: &SafeTensors, name: &str) -> Pixels {
    let t = st
        .tensor(name)
        .unwrap_or_else(|e| panic!("fixture tensor {name}: {e}"));
    assert_eq!(t.dtype(), Dtype::U8, "{name}");
    let s = t.shape();
    Pixels {
        height: s[0],
        width: s[1],
        channels: s[2],
        data: t.data().to_vec(),
    }
}

fn floats(st: &SafeTensors, name: &str) -> Vec<f64> {
    let t = st
        .tensor(name)
        .unwrap_or_else(|e| panic!("fixture tensor {name}: {e}"));
    match t.dtype() {
        Dtype::F32 => t
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
            .collect(),
        Dtype::F64 => t
            .data()
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect(),
        other => panic!("{name}: unexpected dtype {other:?}"),
    }
}

fn boxes(st: &SafeTensors, name: &str) -> Vec<CropBox> {
    let t = st.tensor(name).expect("boxes");
    let v: Vec<i64> = t
        .data()
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect();
    v.chunks_exact(4)
        .map(|b| CropBox {
            x: b[0] as usize,
            y: b[1] as usize,
            w: b[2] as usize,
            h: b[3] as usize,
        })
        .collect()
}

/// Exact equality, or the first differing byte and how many differ.
fn assert_same_pixels(what: &str, ours: &Pixels, reference: &Pixels) {
    assert_eq!(
        (ours.width, ours.height, ours.channels),
        (reference.width, reference.height, reference.channels),
        "{what}: shape"
    );
    let diff: Vec<usize> = (0..ours.data.len())
        .filter(|&i| ours.data[i] != reference.data[i])
        .collect();
    assert!(
        diff.is_empty(),
        "{what}: {} of {} bytes differ from PIL; first at {}: ours {} vs PIL {}",
        diff.len(),
        ours.data.len(),
        diff[0],
        ours.data[diff[0]],
        reference.data[diff[0]]
    );
}

#[test]
fn resize_matches_pil_byte_for_byte_up_and_down_bilinear_and_bicubic() {
    let bytes = fixture();
    let st = SafeTensors::deserialize(&bytes).expect("fixture");
    let mut checked = 0;
    for name in ["rgb", "gray"] {
        let src = pixels(&st, &format!("{name}.pixels"));
        for (iname, interp) in INTERPS {
            for (w, h) in [(16, 16), (50, 41), (7, 30)] {
                let key = format!("{name}.resize.{iname}.{w}x{h}");
                let ours = transforms::resize(&src, w, h, interp);
                assert_same_pixels(&key, &ours, &pixels(&st, &key));
                checked += 1;
            }
        }
    }
    assert_eq!(checked, 12);
}

#[test]
fn resized_crop_at_given_boxes_matches_torchvision_byte_for_byte() {
    let bytes = fixture();
    let st = SafeTensors::deserialize(&bytes).expect("fixture");
    for name in ["rgb", "gray"] {
        let src = pixels(&st, &format!("{name}.pixels"));
        let list = boxes(&st, &format!("{name}.boxes"));
        assert!(list.len() >= 3);
        for (i, b) in list.iter().enumerate() {
            for (iname, interp) in INTERPS {
                let key = format!("{name}.crop{i}.{iname}");
                let window = CropBox {
                    x: 0,
                    y: 0,
                    w: 16,
                    h: 16,
                };
                let ours = transforms::resize_crop(&src, *b, 16, 16, window, interp);
                assert_same_pixels(&key, &ours, &pixels(&st, &key));
            }
        }
    }
}

fn assert_floats(what: &str, ours: &[f32], reference: &[f64]) {
    assert_eq!(ours.len(), reference.len(), "{what}: length");
    let worst = (0..ours.len())
        .max_by(|&a, &b| {
            let da = (ours[a] as f64 - reference[a]).abs();
            let db = (ours[b] as f64 - reference[b]).abs();
            da.total_cmp(&db)
        })
        .expect("non-empty");
    let err = (ours[worst] as f64 - reference[worst]).abs();
    // Same f32 operations as torch (x/255, -mean, /std): equal to the last bit or one ulp.
    assert!(
        err <= 1e-6,
        "{what}: worst element [{worst}] ours {} vs torch {} (|diff| {err:.2e})",
        ours[worst],
        reference[worst]
    );
}

#[test]
fn eval_transform_matches_timm_resize_center_crop_and_normalise() {
    let bytes = fixture();
    let st = SafeTensors::deserialize(&bytes).expect("fixture");
    for (name, mean, std) in [
        (
            "rgb",
            vec![0.485f32, 0.456, 0.406],
            vec![0.229f32, 0.224, 0.225],
        ),
        ("gray", vec![0.5f32], vec![0.5f32]),
    ] {
        let src = pixels(&st, &format!("{name}.pixels"));
        for (iname, interp) in INTERPS {
            let key = format!("{name}.eval.{iname}");
            let img = transforms::eval_resize_crop(&src, 16, 16, 0.875, interp);
            let mut out = vec![f32::NAN; 16 * 16 * src.channels];
            transforms::normalise_chw(&img, false, &mean, &std, &mut out);
            assert_floats(&key, &out, &floats(&st, &key));
        }
    }
}

#[test]
fn train_transform_of_a_given_box_with_flip_matches_torchvision() {
    let bytes = fixture();
    let st = SafeTensors::deserialize(&bytes).expect("fixture");
    let src = pixels(&st, "rgb.pixels");
    let b = boxes(&st, "rgb.boxes")[0];
    let window = CropBox {
        x: 0,
        y: 0,
        w: 16,
        h: 16,
    };
    let img = transforms::resize_crop(&src, b, 16, 16, window, Interpolation::Bicubic);
    let mut out = vec![f32::NAN; 3 * 16 * 16];
    transforms::normalise_chw(
        &img,
        true,
        &[0.485, 0.456, 0.406],
        &[0.229, 0.224, 0.225],
        &mut out,
    );
    assert_floats("rgb.train", &out, &floats(&st, "rgb.train"));
}

#[test]
fn center_crop_rounds_half_offsets_to_even_as_python_does() {
    // (29 - 16) / 2 = 6.5 -> 6 (round half to even), (31 - 16) / 2 = 7.5 -> 8.
    assert_eq!(transforms::center_crop_box(29, 31, 16, 16).x, 6);
    assert_eq!(transforms::center_crop_box(29, 31, 16, 16).y, 8);
    assert_eq!(transforms::shorter_side_size(37, 23, 18), (28, 18));
    assert_eq!(transforms::shorter_side_size(19, 31, 18), (18, 29));
}

#[test]
fn random_resized_crop_boxes_have_timms_distribution() {
    let bytes = fixture();
    let st = SafeTensors::deserialize(&bytes).expect("fixture");
    let mut rng = <rand::rngs::StdRng as rand::SeedableRng>::seed_from_u64(3);
    let range = CropRange::default();
    let n = 20000;
    for (w, h) in [(37usize, 23usize), (100, 100), (20, 60)] {
        let reference = floats(&st, &format!("sampler.{w}x{h}"));
        let (mut area, mut logr, mut cx, mut cy) = (vec![], vec![], vec![], vec![]);
        for _ in 0..n {
            let b = transforms::random_resized_crop_box(w, h, &range, &mut rng);
            assert!(
                b.w >= 1 && b.h >= 1 && b.x + b.w <= w && b.y + b.h <= h,
                "{b:?}"
            );
            area.push((b.w * b.h) as f64 / (w * h) as f64);
            logr.push((b.w as f64 / b.h as f64).ln());
            cx.push((b.x as f64 + b.w as f64 / 2.0) / w as f64);
            cy.push((b.y as f64 + b.h as f64 / 2.0) / h as f64);
        }
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        let sd = |v: &[f64]| {
            let m = mean(v);
            (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / v.len() as f64).sqrt()
        };
        let ours = [
            mean(&area),
            sd(&area),
            mean(&logr),
            sd(&logr),
            mean(&cx),
            mean(&cy),
        ];
        // Two independent samples of n: a mean differs by about sd*sqrt(2/n); allow 5 of
        // those (and the same absolute margin on the standard deviations).
        let spread = [
            reference[1],
            reference[1],
            reference[3],
            reference[3],
            0.3,
            0.3,
        ];
        let names = [
            "mean area",
            "sd area",
            "mean log w/h",
            "sd log w/h",
            "centre x",
            "centre y",
        ];
        for k in 0..6 {
            let tol = 5.0 * spread[k] * (2.0 / n as f64).sqrt();
            assert!(
                (ours[k] - reference[k]).abs() < tol,
                "{w}x{h} {}: ours {:.4} vs timm {:.4} (tolerance {tol:.4})",
                names[k],
                ours[k],
                reference[k]
            );
        }
        eprintln!("{w}x{h}: ours {ours:.4?} timm {reference:.4?}");
    }
}
