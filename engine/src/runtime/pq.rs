//! A binary-heap priority queue with the exact layout of `java.util.PriorityQueue` (JDK 11+).
//!
//! FlinkCEP keeps partial and completed matches in such queues ordered only by their start
//! event; among ties, and for iteration (which is in backing-array order), the heap's layout
//! decides. Reproducing the layout is what makes outputs come in FlinkCEP's order.

use std::cmp::Ordering;

#[derive(Clone, Debug)]
pub struct JavaPq<T> {
    a: Vec<T>,
}

impl<T> Default for JavaPq<T> {
    fn default() -> Self {
        JavaPq { a: Vec::new() }
    }
}

impl<T> JavaPq<T> {
    pub fn new() -> Self {
        JavaPq { a: Vec::new() }
    }

    pub fn len(&self) -> usize {
        self.a.len()
    }

    pub fn is_empty(&self) -> bool {
        self.a.is_empty()
    }

    /// Elements in backing-array order (Java's iteration order; not sorted).
    pub fn iter(&self) -> std::slice::Iter<'_, T> {
        self.a.iter()
    }

    pub fn peek(&self) -> Option<&T> {
        self.a.first()
    }

    pub fn into_vec(self) -> Vec<T> {
        self.a
    }

    /// The backing array (Java's iteration order).
    pub fn as_slice(&self) -> &[T] {
        &self.a
    }

    /// A queue with exactly the backing array `a`, if `a` is a heap under `cmp` (snapshots).
    pub fn from_heap(a: Vec<T>, cmp: impl Fn(&T, &T) -> Ordering) -> Option<Self> {
        let heap = (1..a.len()).all(|i| cmp(&a[(i - 1) / 2], &a[i]) != Ordering::Greater);
        heap.then_some(JavaPq { a })
    }

    /// An empty queue that reuses `storage`'s allocation.
    pub fn reusing(mut storage: Vec<T>) -> Self {
        storage.clear();
        JavaPq { a: storage }
    }

    pub fn offer(&mut self, x: T, cmp: impl Fn(&T, &T) -> Ordering) {
        self.a.push(x);
        let mut k = self.a.len() - 1;
        while k > 0 {
            let p = (k - 1) / 2;
            if cmp(&self.a[k], &self.a[p]) != Ordering::Less {
                break;
            }
            self.a.swap(k, p);
            k = p;
        }
    }

    pub fn poll(&mut self, cmp: impl Fn(&T, &T) -> Ordering) -> Option<T> {
        if self.a.is_empty() {
            return None;
        }
        let last = self.a.len() - 1;
        self.a.swap(0, last);
        let r = self.a.pop();
        let n = self.a.len();
        if n > 0 {
            self.sift_down(0, n, &cmp);
        }
        r
    }

    /// Java's `siftDown` moves the element at `k` down; a sequence of swaps ends in the same layout.
    fn sift_down(&mut self, mut k: usize, n: usize, cmp: &impl Fn(&T, &T) -> Ordering) {
        let half = n / 2;
        while k < half {
            let mut c = 2 * k + 1;
            if c + 1 < n && cmp(&self.a[c], &self.a[c + 1]) == Ordering::Greater {
                c += 1;
            }
            if cmp(&self.a[k], &self.a[c]) != Ordering::Greater {
                break;
            }
            self.a.swap(k, c);
            k = c;
        }
    }

    /// Java's `removeAll` / `removeIf` (JDK 11+ `bulkRemove`): survivors keep their relative
    /// order, then the array is heapified; nothing changes when nothing matches.
    pub fn remove_if(&mut self, mut pred: impl FnMut(&T) -> bool, cmp: impl Fn(&T, &T) -> Ordering) {
        let Some(first) = self.a.iter().position(&mut pred) else { return };
        let mut keep = Vec::with_capacity(self.a.len());
        for (i, x) in std::mem::take(&mut self.a).into_iter().enumerate() {
            if i < first || (i > first && !pred(&x)) {
                keep.push(x);
            }
        }
        self.a = keep;
        let n = self.a.len();
        for i in (0..n / 2).rev() {
            self.sift_down(i, n, &cmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_java_layout() {
        // java.util.PriorityQueue<Integer> pq; offer 5,3,8,1,9,2 -> toString [1, 3, 2, 5, 9, 8]
        let mut pq = JavaPq::new();
        for x in [5, 3, 8, 1, 9, 2] {
            pq.offer(x, i32::cmp);
        }
        assert_eq!(pq.iter().copied().collect::<Vec<_>>(), [1, 3, 2, 5, 9, 8]);
        // poll -> 1, then [2, 3, 8, 5, 9]
        assert_eq!(pq.poll(i32::cmp), Some(1));
        assert_eq!(pq.iter().copied().collect::<Vec<_>>(), [2, 3, 8, 5, 9]);
        // removeIf(x -> x == 3) -> survivors [2, 8, 5, 9], already a heap
        pq.remove_if(|x| *x == 3, i32::cmp);
        assert_eq!(pq.iter().copied().collect::<Vec<_>>(), [2, 8, 5, 9]);
    }

    #[test]
    fn from_heap_keeps_a_heap_and_refuses_the_rest() {
        let pq = JavaPq::from_heap(vec![1, 3, 2, 5, 9, 8], i32::cmp).expect("a heap");
        assert_eq!(pq.as_slice(), [1, 3, 2, 5, 9, 8]);
        assert!(JavaPq::from_heap(vec![1, 3, 2, 0], i32::cmp).is_none());
        assert!(JavaPq::<i32>::from_heap(Vec::new(), i32::cmp).is_some());
    }

    #[test]
    fn ties_keep_heap_order() {
        // Ordered by the first component only, as FlinkCEP's comparator looks only at the start.
        let cmp = |a: &(i32, char), b: &(i32, char)| a.0.cmp(&b.0);
        let mut pq = JavaPq::new();
        for x in [(1, 'a'), (1, 'b'), (1, 'c'), (0, 'd')] {
            pq.offer(x, cmp);
        }
        assert_eq!(pq.iter().map(|x| x.1).collect::<String>(), "dacb");
        let mut out = String::new();
        while let Some(x) = pq.poll(cmp) {
            out.push(x.1);
        }
        assert_eq!(out, "dbca");
    }
}
