//! Column sums (the bias gradient of every linear layer) against the reference.

mod common;
use common::*;
use vit_wgpu::gpu::Command;
use vit_wgpu::kernels::cpu::reduce::ReduceTextures;
use vit_wgpu::kernels::reduce::{ColumnSum, Reduce};
use vit_wgpu::reference;

#[test]
fn column_sums_match_cpu_on_odd_shapes_and_accumulate() {
    let g = gpu();
    let mut r = rng();
    // Widths that are multiples of 64 take the texture path when it is on; the others read
    // the buffer either way.
    let cases = [
        (1, 64, false),
        (65, 33, false),
        (985, 192, true),
        (4160, 257, false),
        (4160, 256, true),
    ];
    for (textures, (rows, cols, acc)) in [false, true]
        .into_iter()
        .flat_map(|t| cases.map(|case| (t, case)))
    {
        let k = Reduce::new(g, textures.then(|| ReduceTextures::boxed(g)));
        let x = random(&mut r, rows * cols);
        let init = random(&mut r, cols);
        let mut sums = init.clone();
        reference::reduce::column_sum(&mut sums, &x, rows, cols, acc);
        let bx = g.upload("x", &x);
        let bs = if acc {
            g.upload("sums", &init)
        } else {
            poisoned(cols)
        };
        let scratch = poisoned(Reduce::column_sum_scratch_len(rows, cols));
        let args = ColumnSum {
            matrix: &bx,
            sums: (&bs).into(),
            scratch: &scratch,
            rows,
            cols,
            accumulate: acc,
        };
        let commands = g.commands(&k, &args);
        g.submit_commands(&commands);
        let via_textures = commands
            .iter()
            .any(|c| matches!(c, Command::CopyBufferToTexture { .. }));
        assert_eq!(
            via_textures,
            textures && cols.is_multiple_of(64),
            "column_sum {rows}x{cols} textures={textures}: path taken"
        );
        assert_close(
            &format!("column_sum {rows}x{cols} acc={acc} textures={textures}"),
            &read(&bs),
            &sums,
            TOLERANCE,
        );
    }
}
