//! Data-parallel sharding (default build, no MPI needed): for K ranks in {1, 2, 4}, the
//! union of the K shards of every global batch -- images with their augmentations, labels,
//! and the dropout masks the model applies -- is the global batch one process sees, and the
//! shards' gradients (loss gradient scaled by 1/global batch) sum to the global gradient.

mod common;
use common::*;
use std::sync::Arc;
use vit_wgpu::data::{folder, Augment, Batch, Dataset, Loader};
use vit_wgpu::dist::Shard;
use vit_wgpu::model::config::{Act, Config, Head};
use vit_wgpu::model::{HostParams, Kernels, Mode, OptimConfig, Vit};

/// Every batch of one epoch as rank `shard` sees it.
fn epoch(ds: &Arc<Dataset>, batch: usize, shard: Shard, augment: bool) -> Vec<Batch> {
    let aug = augment.then(Augment::standard);
    let mut loader = Loader::new(ds.clone(), batch, true, aug, 7, 3, true).shard(shard);
    let out: Vec<_> = loader.by_ref().collect();
    loader.finish().expect("every image loads");
    out
}

/// Rank order concatenation of the K ranks' batch b.
fn union(per_rank: &[Vec<Batch>], b: usize) -> Batch {
    let mut all = Batch {
        images: Vec::new(),
        labels: Vec::new(),
        len: 0,
    };
    for rank in per_rank {
        all.images.extend_from_slice(&rank[b].images);
        all.labels.extend_from_slice(&rank[b].labels);
        all.len += rank[b].len;
    }
    all
}

fn assert_shards_tile_the_epoch(ds: Dataset, batch: usize) {
    let ds = Arc::new(ds);
    let global = epoch(&ds, batch, Shard::WHOLE, true);
    assert_eq!(global.len(), ds.len / batch);
    // The augmentation does something, so equal shards are no accident of its absence.
    let plain = epoch(&ds, batch, Shard::WHOLE, false);
    assert_ne!(
        global[0].images, plain[0].images,
        "augmentation changed nothing"
    );
    assert_eq!(global[0].labels, plain[0].labels);
    for size in [1, 2, 4] {
        let per_rank: Vec<Vec<Batch>> = (0..size)
            .map(|rank| epoch(&ds, batch, Shard { rank, size }, true))
            .collect();
        for (rank, batches) in per_rank.iter().enumerate() {
            assert_eq!(batches.len(), global.len(), "K={size} rank {rank}: batches");
            assert!(batches.iter().all(|b| b.len == batch / size));
        }
        for (b, whole) in global.iter().enumerate() {
            let u = union(&per_rank, b);
            assert_eq!(u.labels, whole.labels, "K={size} batch {b}: labels");
            assert!(
                u.images == whole.images,
                "K={size} batch {b}: images differ"
            );
        }
    }
}

#[test]
fn shards_of_in_memory_batches_are_the_global_batches_with_the_same_augmentations() {
    assert_shards_tile_the_epoch(synthetic(67, 5), 8);
}

#[test]
fn shards_of_streamed_folder_batches_are_the_global_batches_with_the_same_augmentations() {
    use rand::{Rng, SeedableRng};
    let root = fresh_dir("sharding-folder");
    let mut r = rand::rngs::StdRng::seed_from_u64(11);
    for i in 0..18 {
        let class = root.join(format!("class{}", i % 3));
        std::fs::create_dir_all(&class).expect("class dir");
        let (w, h) = (r.random_range(14..30u32), r.random_range(14..30u32));
        let img = image::RgbImage::from_fn(w, h, |_, _| image::Rgb(r.random::<[u8; 3]>()));
        img.save(class.join(format!("{i}.png"))).expect("write png");
    }
    let options = vit_wgpu::data::stream::StreamOptions {
        workers: 2,
        queue_depth: 4,
        ..Default::default()
    };
    let ds = folder::stream(&root, 12, 12, 3, options).expect("stream folder");
    assert_shards_tile_the_epoch(ds, 4);
    let _ = std::fs::remove_dir_all(&root);
}

fn config() -> Config {
    Config {
        image_h: 8,
        image_w: 12,
        channels: 1,
        patch: 4,
        dim: 16,
        depth: 2,
        heads: 2,
        mlp_hidden: 24,
        act: Act::Gelu,
        head: Head::Linear,
        dropout: 0.3,
        ln_eps: 1e-6,
        classes: 5,
        options: Default::default(),
    }
}

/// Per-image losses and the gradient arena after forward (with dropout) and backward of
/// `images` on a model of batch `labels.len()`; `shard` = (first sample, global batch).
fn losses_and_grads(
    params: &HostParams,
    images: &[f32],
    labels: &[u32],
    shard: Option<(usize, usize)>,
) -> (Vec<f32>, Vec<f32>) {
    let g = gpu();
    let kernels = Kernels::new(g);
    let cfg = config();
    let b = labels.len();
    let mut model = Vit::new(g, &kernels, &cfg, params, b, Mode::Train, 99).expect("model");
    if let Some((first, global)) = shard {
        model.set_shard(g, &kernels, first, global);
    }
    model.write_batch(g, images, labels);
    model.write_step(g, 5, 0.0, &OptimConfig::default());
    let mut encoder = g.device.create_command_encoder(&Default::default());
    model.record_gradients(&mut encoder);
    g.queue.submit([encoder.finish()]);
    let losses = read_n(&model.losses, b);
    let grads = pollster::block_on(model.read_grads(g))
        .expect("gradients")
        .concat();
    (losses, grads)
}

#[test]
fn sharded_models_apply_the_global_dropout_masks_and_their_gradients_sum_to_the_global_one() {
    let mut r = rng();
    let cfg = config();
    let batch = 8;
    let params = HostParams::init(&cfg, 3);
    let image = cfg.channels * cfg.image_h * cfg.image_w;
    let images = random(&mut r, batch * image);
    let labels: Vec<u32> = (0..batch as u32).map(|i| (i * 3) % 5).collect();
    let (losses, grads) = losses_and_grads(&params, &images, &labels, None);
    for size in [1, 2, 4] {
        let local = batch / size;
        let mut shard_losses = Vec::new();
        let mut grad_sum = vec![0f32; grads.len()];
        for rank in 0..size {
            let rows = rank * local..(rank + 1) * local;
            let (l, gr) = losses_and_grads(
                &params,
                &images[rows.start * image..rows.end * image],
                &labels[rows.clone()],
                Some((rows.start, batch)),
            );
            shard_losses.extend(l);
            grad_sum.iter_mut().zip(&gr).for_each(|(s, x)| *s += x);
        }
        assert_close(
            &format!("K={size}: per-image losses"),
            &shard_losses,
            &losses,
            1e-5,
        );
        for (i, (a, b)) in shard_losses.iter().zip(&losses).enumerate() {
            assert!(
                (a - b).abs() <= 1e-5 * b.abs().max(1.0),
                "K={size} image {i}: {a} vs {b}"
            );
        }
        assert_close(
            &format!("K={size}: summed gradients"),
            &grad_sum,
            &grads,
            1e-5,
        );
    }
    // Control: a shard that forgets its position draws other masks (and scales by 1/local).
    let (l, _) = losses_and_grads(&params, &images[4 * image..], &labels[4..], None);
    let same = l
        .iter()
        .zip(&losses[4..])
        .all(|(a, b)| (a - b).abs() <= 1e-5 * b.abs());
    assert!(
        !same,
        "masks at local positions equal the global ones: dropout ignores position"
    );
}
