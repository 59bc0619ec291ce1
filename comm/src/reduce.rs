//! Element-wise reduction kernels, one generic loop instantiated per dtype and op.
//!
//! The loops are plain `zip` loops over aligned slices so that LLVM vectorises them; on x86-64
//! the same loop is compiled a second time with AVX2 enabled and picked at run time. Half
//! precision types are widened to `f32` a block at a time, reduced, and rounded back once.
//!
//! [`Order`] fixes which operand comes first. IEEE `min`/`max` of `+0`/`-0` and NaN payloads are
//! not symmetric, so algorithms in which two ranks combine the same pair of values pass the
//! lower rank's data first and every rank ends with bitwise identical results.

use bytemuck::Pod;
use half::{bf16, f16, slice::HalfFloatSliceExt};

use crate::dtype::{DType, ReduceOp};

/// Which operand of a binary reduction is the left one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    /// `acc = acc ∘ src`.
    AccFirst,
    /// `acc = src ∘ acc`.
    SrcFirst,
}

/// `acc[i] = acc[i] ∘ src[i]` (or `src[i] ∘ acc[i]`) for every element. `Average` reduces as
/// `Sum`; call [`divide`] once at the end. Panics only if the byte lengths differ or are not a
/// multiple of the element size, which callers guarantee.
pub fn reduce_into(dtype: DType, op: ReduceOp, acc: &mut [u8], src: &[u8], order: Order) {
    assert_eq!(acc.len(), src.len(), "reduce_into: operand lengths differ");
    assert_eq!(acc.len() % dtype.size(), 0, "reduce_into: partial element");
    match dtype {
        DType::U8 => int::<u8>(op, acc, src, order),
        DType::I8 => int::<i8>(op, acc, src, order),
        DType::I16 => int::<i16>(op, acc, src, order),
        DType::I32 => int::<i32>(op, acc, src, order),
        DType::I64 => int::<i64>(op, acc, src, order),
        DType::F32 => float::<f32>(op, acc, src, order),
        DType::F64 => float::<f64>(op, acc, src, order),
        DType::F16 => half_float::<f16>(op, acc, src, order),
        DType::BF16 => half_float::<bf16>(op, acc, src, order),
        DType::Bool => logic(op, acc, src),
    }
}

/// Divides every element by `n` (the final step of `Average`). Integers truncate toward zero.
pub fn divide(dtype: DType, buf: &mut [u8], n: usize) {
    if n <= 1 {
        return;
    }
    match dtype {
        // Widened so that no divisor is truncated; the quotient always fits back.
        DType::U8 => map::<u8>(buf, |x| (i64::from(x) / n as i64) as u8),
        DType::I8 => map::<i8>(buf, |x| (i64::from(x) / n as i64) as i8),
        DType::I16 => map::<i16>(buf, |x| (i64::from(x) / n as i64) as i16),
        DType::I32 => map::<i32>(buf, |x| (i64::from(x) / n as i64) as i32),
        DType::I64 => map::<i64>(buf, |x| x / n as i64),
        DType::F32 => map::<f32>(buf, |x| x / n as f32),
        DType::F64 => map::<f64>(buf, |x| x / n as f64),
        DType::F16 => map::<f16>(buf, |x| f16::from_f32(x.to_f32() / n as f32)),
        DType::BF16 => map::<bf16>(buf, |x| bf16::from_f32(x.to_f32() / n as f32)),
        // Never averaged (the collectives refuse it): a truth value has no mean.
        DType::Bool => {}
    }
}

/// Fills `buf` with the identity of `op` (what a rank that has joined contributes): 0 for sum
/// and average, 1 for product, the largest value for min and the smallest for max.
pub fn fill_identity(dtype: DType, op: ReduceOp, buf: &mut [u8]) {
    macro_rules! fill {
        ($t:ty, $zero:expr, $one:expr, $max:expr, $min:expr) => {{
            let v: $t = match op {
                ReduceOp::Sum | ReduceOp::Average => $zero,
                ReduceOp::Product => $one,
                ReduceOp::Min => $max,
                ReduceOp::Max => $min,
            };
            map::<$t>(buf, |_| v)
        }};
    }
    match dtype {
        DType::U8 => fill!(u8, 0, 1, u8::MAX, u8::MIN),
        DType::I8 => fill!(i8, 0, 1, i8::MAX, i8::MIN),
        DType::I16 => fill!(i16, 0, 1, i16::MAX, i16::MIN),
        DType::I32 => fill!(i32, 0, 1, i32::MAX, i32::MIN),
        DType::I64 => fill!(i64, 0, 1, i64::MAX, i64::MIN),
        DType::F32 => fill!(f32, 0.0, 1.0, f32::INFINITY, f32::NEG_INFINITY),
        DType::F64 => fill!(f64, 0.0, 1.0, f64::INFINITY, f64::NEG_INFINITY),
        DType::F16 => fill!(f16, f16::ZERO, f16::ONE, f16::INFINITY, f16::NEG_INFINITY),
        DType::BF16 => fill!(bf16, bf16::ZERO, bf16::ONE, bf16::INFINITY, bf16::NEG_INFINITY),
        // "or" has false as identity, "and" true.
        DType::Bool => fill!(u8, 0, 1, 1, 0),
    }
}

/// Booleans: sum and max are "or", product and min "and"; any nonzero byte is true, and the
/// result is 0 or 1 (symmetric, so the order does not matter).
fn logic(op: ReduceOp, acc: &mut [u8], src: &[u8]) {
    match op {
        ReduceOp::Sum | ReduceOp::Average | ReduceOp::Max => {
            acc.iter_mut().zip(src).for_each(|(a, &s)| *a = u8::from(*a != 0 || s != 0))
        }
        ReduceOp::Product | ReduceOp::Min => {
            acc.iter_mut().zip(src).for_each(|(a, &s)| *a = u8::from(*a != 0 && s != 0))
        }
    }
}

/// Integer ops: wrapping sum and product, exact min and max.
trait Int: Pod + Ord {
    fn wadd(self, o: Self) -> Self;
    fn wmul(self, o: Self) -> Self;
}

macro_rules! int_impl {
    ($($t:ty),*) => {$(
        impl Int for $t {
            #[inline(always)]
            fn wadd(self, o: Self) -> Self { self.wrapping_add(o) }
            #[inline(always)]
            fn wmul(self, o: Self) -> Self { self.wrapping_mul(o) }
        }
    )*};
}
int_impl!(u8, i8, i16, i32, i64);

fn int<T: Int>(op: ReduceOp, acc: &mut [u8], src: &[u8], order: Order) {
    match op {
        ReduceOp::Sum | ReduceOp::Average => combine::<T>(acc, src, order, T::wadd),
        ReduceOp::Product => combine::<T>(acc, src, order, T::wmul),
        ReduceOp::Min => combine::<T>(acc, src, order, |a, b| if b < a { b } else { a }),
        ReduceOp::Max => combine::<T>(acc, src, order, |a, b| if b > a { b } else { a }),
    }
}

fn float<T: Pod + PartialOrd + std::ops::Add<Output = T> + std::ops::Mul<Output = T>>(
    op: ReduceOp,
    acc: &mut [u8],
    src: &[u8],
    order: Order,
) {
    match op {
        ReduceOp::Sum | ReduceOp::Average => combine::<T>(acc, src, order, |a, b| a + b),
        ReduceOp::Product => combine::<T>(acc, src, order, |a, b| a * b),
        ReduceOp::Min => combine::<T>(acc, src, order, |a, b| if b < a { b } else { a }),
        ReduceOp::Max => combine::<T>(acc, src, order, |a, b| if b > a { b } else { a }),
    }
}

/// 16-bit floats: widen a block to `f32`, reduce there, round back once per element.
fn half_float<H: Pod>(op: ReduceOp, acc: &mut [u8], src: &[u8], order: Order)
where
    [H]: HalfFloatSliceExt,
{
    const BLOCK: usize = 256;
    let mut a32 = [0f32; BLOCK];
    let mut s32 = [0f32; BLOCK];
    let mut a16 = [H::zeroed(); BLOCK];
    let mut s16 = [H::zeroed(); BLOCK];
    let bytes = BLOCK * 2;
    for (acc, src) in acc.chunks_mut(bytes).zip(src.chunks(bytes)) {
        let n = acc.len() / 2;
        // Copy through aligned blocks: the byte slices may start at any address.
        bytemuck::cast_slice_mut::<H, u8>(&mut a16[..n]).copy_from_slice(acc);
        bytemuck::cast_slice_mut::<H, u8>(&mut s16[..n]).copy_from_slice(src);
        a16[..n].convert_to_f32_slice(&mut a32[..n]);
        s16[..n].convert_to_f32_slice(&mut s32[..n]);
        float::<f32>(op, bytemuck::cast_slice_mut(&mut a32[..n]), bytemuck::cast_slice(&s32[..n]), order);
        a16[..n].convert_from_f32_slice(&a32[..n]);
        acc.copy_from_slice(bytemuck::cast_slice(&a16[..n]));
    }
}

/// Applies `f` element-wise, on typed views when both slices are aligned for `T` and through
/// an aligned bounce block otherwise.
#[inline(always)]
fn combine<T: Pod>(acc: &mut [u8], src: &[u8], order: Order, f: impl Fn(T, T) -> T + Copy) {
    match (bytemuck::try_cast_slice_mut::<u8, T>(acc), bytemuck::try_cast_slice::<u8, T>(src)) {
        (Ok(a), Ok(s)) => dispatch(a, s, order, f),
        _ => {
            const BLOCK: usize = 512;
            let mut a = [T::zeroed(); BLOCK];
            let mut s = [T::zeroed(); BLOCK];
            let bytes = BLOCK * size_of::<T>();
            for (acc, src) in acc.chunks_mut(bytes).zip(src.chunks(bytes)) {
                let n = acc.len() / size_of::<T>();
                bytemuck::cast_slice_mut::<T, u8>(&mut a[..n]).copy_from_slice(acc);
                bytemuck::cast_slice_mut::<T, u8>(&mut s[..n]).copy_from_slice(src);
                dispatch(&mut a[..n], &s[..n], order, f);
                acc.copy_from_slice(bytemuck::cast_slice(&a[..n]));
            }
        }
    }
}

#[inline(always)]
fn dispatch<T: Pod>(acc: &mut [T], src: &[T], order: Order, f: impl Fn(T, T) -> T + Copy) {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU supports AVX2, checked just above.
        unsafe { zip_avx2(acc, src, order, f) };
        return;
    }
    zip(acc, src, order, f);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn zip_avx2<T: Pod>(acc: &mut [T], src: &[T], order: Order, f: impl Fn(T, T) -> T + Copy) {
    zip(acc, src, order, f);
}

#[inline(always)]
fn zip<T: Pod>(acc: &mut [T], src: &[T], order: Order, f: impl Fn(T, T) -> T + Copy) {
    match order {
        Order::AccFirst => acc.iter_mut().zip(src).for_each(|(a, s)| *a = f(*a, *s)),
        Order::SrcFirst => acc.iter_mut().zip(src).for_each(|(a, s)| *a = f(*s, *a)),
    }
}

fn map<T: Pod>(buf: &mut [u8], f: impl Fn(T) -> T) {
    for chunk in buf.chunks_exact_mut(size_of::<T>()) {
        let v: T = bytemuck::pod_read_unaligned(chunk);
        chunk.copy_from_slice(bytemuck::bytes_of(&f(v)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn reference_i32(op: ReduceOp, a: i32, b: i32) -> i32 {
        match op {
            ReduceOp::Sum | ReduceOp::Average => a.wrapping_add(b),
            ReduceOp::Product => a.wrapping_mul(b),
            ReduceOp::Min => a.min(b),
            ReduceOp::Max => a.max(b),
        }
    }

    proptest! {
        #[test]
        fn i32_matches_scalar(a in proptest::collection::vec(any::<i32>(), 0..700), seed in any::<i32>(), op in 0usize..5, offset in 0usize..4) {
            let op = ReduceOp::ALL[op];
            let b: Vec<i32> = a.iter().map(|x| x.wrapping_mul(31).wrapping_add(seed)).collect();
            // Misaligned views exercise the bounce path.
            let mut acc = vec![0u8; a.len() * 4 + offset];
            acc[offset..].copy_from_slice(bytemuck::cast_slice(&a));
            reduce_into(DType::I32, op, &mut acc[offset..], bytemuck::cast_slice(&b), Order::AccFirst);
            for (i, chunk) in acc[offset..].chunks(4).enumerate() {
                let got = i32::from_ne_bytes(chunk.try_into().unwrap());
                prop_assert_eq!(got, reference_i32(op, a[i], b[i]));
            }
        }

        #[test]
        fn f32_matches_scalar(a in proptest::collection::vec(-1e6f32..1e6, 0..700), b0 in -1e3f32..1e3, op in 0usize..5) {
            let op = ReduceOp::ALL[op];
            let b: Vec<f32> = a.iter().map(|x| x * 0.5 + b0).collect();
            let mut acc = a.clone();
            reduce_into(DType::F32, op, bytemuck::cast_slice_mut(&mut acc), bytemuck::cast_slice(&b), Order::SrcFirst);
            for i in 0..a.len() {
                let want = match op {
                    ReduceOp::Sum | ReduceOp::Average => b[i] + a[i],
                    ReduceOp::Product => b[i] * a[i],
                    ReduceOp::Min => if a[i] < b[i] { a[i] } else { b[i] },
                    ReduceOp::Max => if a[i] > b[i] { a[i] } else { b[i] },
                };
                prop_assert_eq!(acc[i].to_bits(), want.to_bits());
            }
        }

        #[test]
        fn bf16_rounds_once(a in proptest::collection::vec(-300f32..300., 0..600), b in proptest::collection::vec(-300f32..300., 600)) {
            let a16: Vec<bf16> = a.iter().map(|&x| bf16::from_f32(x)).collect();
            let b16: Vec<bf16> = b[..a.len()].iter().map(|&x| bf16::from_f32(x)).collect();
            let mut acc = a16.clone();
            reduce_into(DType::BF16, ReduceOp::Sum, bytemuck::cast_slice_mut(&mut acc), bytemuck::cast_slice(&b16), Order::AccFirst);
            for i in 0..a.len() {
                prop_assert_eq!(acc[i], bf16::from_f32(a16[i].to_f32() + b16[i].to_f32()));
            }
        }
    }

    #[test]
    fn order_decides_signed_zero() {
        let mut acc = [0.0f32];
        reduce_into(
            DType::F32,
            ReduceOp::Min,
            bytemuck::cast_slice_mut(&mut acc),
            bytemuck::cast_slice(&[-0.0f32]),
            Order::AccFirst,
        );
        assert!(acc[0].is_sign_positive());
        let mut acc = [0.0f32];
        reduce_into(
            DType::F32,
            ReduceOp::Min,
            bytemuck::cast_slice_mut(&mut acc),
            bytemuck::cast_slice(&[-0.0f32]),
            Order::SrcFirst,
        );
        assert!(acc[0].is_sign_negative());
    }

    #[test]
    fn average_divides_and_truncates() {
        let mut ints = [7i32, -7, 8];
        divide(DType::I32, bytemuck::cast_slice_mut(&mut ints), 2);
        assert_eq!(ints, [3, -3, 4]);
        let mut halfs = [f16::from_f32(3.0)];
        divide(DType::F16, bytemuck::cast_slice_mut(&mut halfs), 2);
        assert_eq!(halfs[0].to_f32(), 1.5);
        let mut bytes = [255u8, 9];
        divide(DType::U8, &mut bytes, 300);
        assert_eq!(bytes, [0, 0]);
    }

    #[test]
    fn i16_wraps_and_averages() {
        let mut acc = [i16::MAX, -3, 5];
        reduce_into(
            DType::I16,
            ReduceOp::Sum,
            bytemuck::cast_slice_mut(&mut acc),
            bytemuck::cast_slice(&[1i16, -4, 6]),
            Order::AccFirst,
        );
        assert_eq!(acc, [i16::MIN, -7, 11]);
        divide(DType::I16, bytemuck::cast_slice_mut(&mut acc), 2);
        assert_eq!(acc, [i16::MIN / 2, -3, 5]);
        let mut id = [0i16; 2];
        fill_identity(DType::I16, ReduceOp::Min, bytemuck::cast_slice_mut(&mut id));
        assert_eq!(id, [i16::MAX; 2]);
    }

    #[test]
    fn bool_reduces_as_logic_and_its_identities_are_neutral() {
        let a = [0u8, 0, 1, 1];
        let b = [0u8, 1, 0, 2]; // any nonzero byte is true
        for (op, want) in [
            (ReduceOp::Sum, [0, 1, 1, 1]),
            (ReduceOp::Max, [0, 1, 1, 1]),
            (ReduceOp::Min, [0, 0, 0, 1]),
            (ReduceOp::Product, [0, 0, 0, 1]),
        ] {
            let mut acc = a;
            reduce_into(DType::Bool, op, &mut acc, &b, Order::AccFirst);
            assert_eq!(acc, want, "{op}");
            let mut id = [7u8; 4];
            fill_identity(DType::Bool, op, &mut id);
            let mut with_id = a;
            reduce_into(DType::Bool, op, &mut with_id, &id, Order::AccFirst);
            assert_eq!(with_id, a, "{op}: the identity changes nothing");
        }
    }
}
