//! The loader thread of an image folder's per-batch views: it walks the run's plan and makes,
//! for each batch, the teacher's view (another shape or normalization than the student's, or an
//! augmented crop) and, under `--augment`, the student's view of the same crops, each resized
//! to its model's shape ([`crate::images::view::render`]).
//!
//! Bounds: the teacher's views go to the pool through a channel of `--prefetch` batches (the
//! pool takes them as its window has room), the student's to the training loop through one of
//! [`STUDENT_VIEWS_AHEAD`]. Per batch the teacher's view is sent first: the loop, waiting for
//! batch i, has every teacher view up to i already sent (or in the channel), so the pool can
//! answer batch i, and the student's view of i is sent before the thread blocks on any later
//! batch; neither channel can hold the other up. When a receiver goes away (the run stopped or
//! failed) the thread ends quietly; its own failures come back from [`Feed::finish`].

use super::error::AppError;
use crate::images::augment::crop_box;
use crate::images::view::render;
use crate::images::{Augment, CropBox, ImageError, Store, ViewSpec};
use crate::schedule::{PlannedBatch, ViewedBatch};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;
use tokio::sync::mpsc;

/// Batches of the student's views made ahead of the training loop.
pub(crate) const STUDENT_VIEWS_AHEAD: usize = 2;

/// Images a view is cut from per batch: the store, the view, and the threads that make it.
#[derive(Debug, Clone)]
pub(crate) struct Cut {
    /// The images.
    pub(crate) store: Arc<Store>,
    /// The view to make of them.
    pub(crate) view: ViewSpec,
    /// Threads making a batch's views (`--loader-threads`).
    pub(crate) threads: usize,
}

impl Cut {
    /// The loader thread's spec of a teacher's un-augmented views (evaluation, capture).
    pub(crate) fn teacher_only(self, teacher_ahead: usize) -> FeedSpec {
        FeedSpec {
            store: self.store,
            teacher: Some(self.view),
            student: None,
            augment: Augment::default(),
            seed: 0,
            teacher_ahead,
            threads: self.threads,
        }
    }
}

/// What the loader thread makes: the store it cuts from, the sides, the augmentation.
#[derive(Debug, Clone)]
pub(crate) struct FeedSpec {
    /// The images of the split the plan covers.
    pub(crate) store: Arc<Store>,
    /// The teacher's view, if the teachers get views from the thread.
    pub(crate) teacher: Option<ViewSpec>,
    /// The student's view, if the loop gets its (augmented) views from the thread.
    pub(crate) student: Option<ViewSpec>,
    /// `--augment` (none: the whole image).
    pub(crate) augment: Augment,
    /// The run's seed (the crops are drawn from it).
    pub(crate) seed: u64,
    /// Capacity of the teachers' channel (`--prefetch`).
    pub(crate) teacher_ahead: usize,
    /// Threads making each batch's views (`--loader-threads`).
    pub(crate) threads: usize,
}

/// A running loader thread and the receiving ends of its views.
#[derive(Debug)]
pub(crate) struct Feed {
    /// The teachers' views, for [`crate::teachers::Pool::run_views`].
    pub(crate) teacher: Option<mpsc::Receiver<ViewedBatch>>,
    /// The student's views, for the training loop.
    pub(crate) student: Option<mpsc::Receiver<ViewedBatch>>,
    handle: JoinHandle<Result<FeedStats, ImageError>>,
}

/// What the loader thread made.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct FeedStats {
    /// Images rendered (each view of each sample counts once).
    pub(crate) images: u64,
    /// Seconds spent rendering.
    pub(crate) render_s: f64,
}

/// Starts the loader thread (`image-views`) over `plan`.
///
/// # Errors
/// [`AppError::Images`] when the thread cannot start.
pub(crate) fn start<I>(plan: I, spec: FeedSpec) -> Result<Feed, AppError>
where
    I: IntoIterator<Item = PlannedBatch>,
    I::IntoIter: Send + 'static,
{
    let (teacher_tx, teacher_rx) = side(spec.teacher.is_some(), spec.teacher_ahead);
    let (student_tx, student_rx) = side(spec.student.is_some(), STUDENT_VIEWS_AHEAD);
    let plan = plan.into_iter();
    let handle = std::thread::Builder::new()
        .name("image-views".into())
        .spawn(move || make_views(plan, &spec, teacher_tx, student_tx))
        .map_err(|e| ImageError::Loader(format!("cannot start the image-views thread: {e}")))?;
    Ok(Feed {
        teacher: teacher_rx,
        student: student_rx,
        handle,
    })
}

type Side = (
    Option<mpsc::Sender<ViewedBatch>>,
    Option<mpsc::Receiver<ViewedBatch>>,
);

/// A bounded channel of `capacity` batches, when `wanted`.
fn side(wanted: bool, capacity: usize) -> Side {
    if !wanted {
        return (None, None);
    }
    let (tx, rx) = mpsc::channel(capacity.max(1));
    (Some(tx), Some(rx))
}

impl Feed {
    /// Waits for the thread (off the async runtime) once the run is over.
    ///
    /// # Errors
    /// The thread's [`ImageError`], or [`ImageError::Loader`] if it panicked.
    pub(crate) async fn finish(self) -> Result<FeedStats, AppError> {
        let Feed { handle, .. } = self;
        let joined = tokio::task::spawn_blocking(move || handle.join())
            .await
            .map_err(|e| ImageError::Loader(e.to_string()))?;
        let stats =
            joined.map_err(|p| ImageError::Loader(distill_models::panic_message(&*p)))??;
        if stats.images > 0 {
            tracing::info!(
                images = stats.images,
                render_s = format!("{:.2}", stats.render_s),
                images_per_s = format!("{:.0}", stats.images as f64 / stats.render_s.max(1e-9)),
                "image views made per batch"
            );
        }
        Ok(stats)
    }
}

/// The thread's loop: for each batch, the crops, the teacher's view (sent first), the
/// student's.
fn make_views(
    plan: impl Iterator<Item = PlannedBatch>,
    spec: &FeedSpec,
    teacher_tx: Option<mpsc::Sender<ViewedBatch>>,
    student_tx: Option<mpsc::Sender<ViewedBatch>>,
) -> Result<FeedStats, ImageError> {
    let mut stats = FeedStats::default();
    let sides = [(&spec.teacher, teacher_tx), (&spec.student, student_tx)];
    for batch in plan {
        let crops = crops_of(&batch, spec);
        let mut made: Option<(&ViewSpec, tch::Tensor)> = None;
        for (view, tx) in &sides {
            let (Some(view), Some(tx)) = (view, tx) else {
                continue;
            };
            let inputs = match &made {
                // The same view (the student's, under --augment): made once.
                Some((v, t)) if *v == view => t.shallow_clone(),
                _ => {
                    let t0 = Instant::now();
                    let t = render(
                        &spec.store,
                        &batch.indices,
                        crops.as_deref(),
                        view,
                        spec.threads,
                    )?;
                    stats.render_s += t0.elapsed().as_secs_f64();
                    stats.images += batch.indices.len() as u64;
                    made = Some((view, t.shallow_clone()));
                    t
                }
            };
            let viewed = ViewedBatch::new(batch.clone(), inputs);
            if tx.blocking_send(viewed).is_err() {
                // The run stopped (or failed, and says why): nothing more to make.
                return Ok(stats);
            }
        }
    }
    Ok(stats)
}

/// The crops of `batch` under `spec.augment` (`None`: whole images).
fn crops_of(batch: &PlannedBatch, spec: &FeedSpec) -> Option<Vec<CropBox>> {
    let g = spec.store.geometry;
    spec.augment.any().then(|| {
        batch
            .indices
            .iter()
            .map(|&i| {
                crop_box(
                    spec.seed,
                    (batch.epoch, batch.index, i),
                    g.height,
                    g.width,
                    spec.augment,
                )
            })
            .collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::images::Geometry;
    use tch::Tensor;

    /// Four 32 × 32 gray-in-RGB images of the ramp `v = 4x + 3y + 2k` (x: column, y: row, k:
    /// image): every region and its mirror image look different.
    fn ramp_store() -> Arc<Store> {
        let mut data = Vec::new();
        for k in 0..4u32 {
            for y in 0..32u32 {
                for x in 0..32u32 {
                    let v = (4 * x + 3 * y + 2 * k) as u8;
                    data.extend([v, v, v]);
                }
            }
        }
        Arc::new(Store {
            geometry: Geometry {
                channels: 3,
                height: 32,
                width: 32,
            },
            len: 4,
            data,
        })
    }

    fn view(channels: u8, size: u32) -> ViewSpec {
        ViewSpec {
            geometry: Geometry {
                channels,
                height: size,
                width: size,
            },
            mean: vec![0.0; channels as usize],
            std: vec![1.0; channels as usize],
        }
    }

    /// Both views of every batch of `plan`, from a loader thread with a 3 × 32 × 32 teacher
    /// and a 1 × 16 × 16 student.
    fn views_of(plan: Vec<PlannedBatch>, seed: u64) -> Vec<(Tensor, Tensor)> {
        let spec = FeedSpec {
            store: ramp_store(),
            teacher: Some(view(3, 32)),
            student: Some(view(1, 16)),
            augment: "crop,flip".parse().unwrap(),
            seed,
            teacher_ahead: 1,
            threads: 2,
        };
        let n = plan.len();
        let mut feed = start(plan, spec).unwrap();
        let (mut t, mut s) = (feed.teacher.take().unwrap(), feed.student.take().unwrap());
        let got = (0..n)
            .map(|_| {
                let a = t.blocking_recv().unwrap();
                let b = s.blocking_recv().unwrap();
                assert_eq!(a.batch, b.batch);
                (a.inputs, b.inputs)
            })
            .collect();
        assert!(t.blocking_recv().is_none() && s.blocking_recv().is_none());
        got
    }

    fn plan(epoch: u64) -> Vec<PlannedBatch> {
        (0..2)
            .map(|index| PlannedBatch {
                epoch,
                index,
                indices: vec![index as i64 * 2, index as i64 * 2 + 1],
            })
            .collect()
    }

    #[test]
    fn the_teacher_and_the_student_get_the_same_crop_each_in_its_own_shape() {
        let got = views_of(plan(0), 9);
        let mut uncropped = 0;
        for (teacher, student) in &got {
            assert_eq!(teacher.size(), [2, 3, 32, 32]);
            assert_eq!(student.size(), [2, 1, 16, 16]);
            // The teacher's view halved (2 × 2 means) is the student's, within a few gray levels
            // (two resizes round differently); another crop of the ramp differs by tens.
            let halved = teacher.narrow(1, 0, 1).avg_pool2d(
                [2, 2],
                [2, 2],
                [0, 0],
                false,
                true,
                None::<i64>,
            );
            let diff = (halved - student).abs().max().double_value(&[]) * 255.0;
            assert!(diff <= 4.0, "views differ by {diff} gray levels");
            let whole = Tensor::from_slice(&ramp_store().data[..3072])
                .view([32, 32, 3])
                .permute([2, 0, 1])
                .to_kind(tch::Kind::Float)
                / 255.0;
            let first = teacher.get(0);
            if (first - whole).abs().max().double_value(&[]) < 1e-6 {
                uncropped += 1;
            }
        }
        assert!(uncropped < got.len(), "no view was cropped");
        // The same (seed, epoch, batch, sample): the same views; another epoch: other crops.
        let again = views_of(plan(0), 9);
        for ((a, b), (c, d)) in got.iter().zip(&again) {
            assert!(a.equal(c) && b.equal(d));
        }
        let other = views_of(plan(1), 9);
        assert!(got.iter().zip(&other).any(|((a, _), (c, _))| !a.equal(c)));
    }
}
