//! transformers' `Dinov2ForImageClassification` head on the device: the class token and the
//! mean of the patch tokens of the normed stream, side by side in one [B, 2D] row, into a
//! linear head of width 2D. Built from tested kernels (pooling, column copies, the linear
//! layer); its gradient is checked against the f64 reference and transformers' (tests/hub_*).

use super::{Net, Readout};
use crate::kernels::elementwise::{ColumnBlock, CopyColumns};
use crate::model::recorder::Recorder;

/// The feature row [B, 2D] and its gradient.
pub struct ClsAvgBuffers {
    pub feat: wgpu::Buffer,
    pub dfeat: wgpu::Buffer,
}

impl Net {
    /// Column block `half` (0: class token, 1: patch mean) of the [B, 2D] row to or from
    /// a [B, D] buffer.
    fn half_block(&self, half: usize, into_row: bool) -> ColumnBlock {
        let d = self.embed_shape.dim;
        let (wide, narrow) = ((2 * d, half * d), (d, 0));
        let ((src_stride, src_offset), (dst_stride, dst_offset)) = match into_row {
            true => (narrow, wide),
            false => (wide, narrow),
        };
        ColumnBlock {
            rows: self.batch(),
            width: d,
            src_stride,
            src_offset,
            dst_stride,
            dst_offset,
        }
    }

    /// logits = head([cls ; mean of patches]) of `stream` (the normed tokens).
    pub(super) fn cls_avg_forward(&self, r: &mut Recorder, stream: &wgpu::Buffer) {
        let ob = &self.options;
        let Some(buf) = &ob.cls_avg else {
            panic!("internal: the cls+avg head without its buffers")
        };
        for (half, ro) in ob.readouts.iter().enumerate() {
            r.record(&r.kernels.tokens, &ro.pool(ob.layout, stream));
            let copy = CopyColumns {
                src: &ro.pooled,
                dst: &buf.feat,
                block: self.half_block(half, true),
            };
            r.record(&r.kernels.elementwise, &copy);
        }
        self.head_linear(r, &self.weights.head, &buf.feat, &self.logits);
    }

    /// The head's gradients and d(stream) into `dstream` (every token written).
    pub(super) fn cls_avg_backward(
        &self,
        r: &mut Recorder,
        dlogits: &wgpu::Buffer,
        dstream: &wgpu::Buffer,
    ) {
        let (ob, g, b) = (&self.options, self.grads(), self.batch());
        let Some(buf) = &ob.cls_avg else {
            panic!("internal: the cls+avg head without its buffers")
        };
        let super::HeadWeights::Linear(head) = &self.weights.head else {
            panic!("internal: the cls+avg head is linear (Config::validate)")
        };
        r.linear_backward(dlogits, &buf.feat, head, Some(&buf.dfeat), b, None);
        let halves: [(&Readout, &wgpu::Buffer); 2] =
            [(&ob.readouts[0], &g.d_cls_n), (&ob.readouts[1], &g.d_cls_x)];
        for (half, (ro, dpooled)) in halves.into_iter().enumerate() {
            let copy = CopyColumns {
                src: &buf.dfeat,
                dst: dpooled,
                block: self.half_block(half, false),
            };
            r.record(&r.kernels.elementwise, &copy);
            let scatter = ro.pool_backward(ob.layout, dpooled, dstream, half > 0);
            r.record(&r.kernels.tokens, &scatter);
        }
    }
}
