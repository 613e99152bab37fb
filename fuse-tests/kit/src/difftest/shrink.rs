//! Shrinking a failing sequence to a minimal one (delta debugging).

use super::*;

impl Tester {
    /// Delta debugging (ddmin): removes chunks of the sequence while it still fails,
    /// halving the chunk size down to single operations. Bounded by `shrink_runs` and
    /// `shrink_time`. Any mismatch counts as "still fails".
    #[allow(clippy::type_complexity)]
    pub fn shrink(
        &mut self,
        ops: &[Op],
        at: Option<usize>,
        msg: &str,
    ) -> anyhow::Result<(Vec<Op>, Option<usize>, String, usize, bool)> {
        let deadline = Instant::now() + self.cfg.shrink_time;
        let mut runs = 0usize;
        let mut cur: Vec<Op> = ops.to_vec();
        let (mut cur_at, mut cur_msg) = (at, msg.to_string());
        if let Some(i) = at {
            cur.truncate(i + 1);
        }
        // First: does it fail again on fresh mounts?
        runs += 1;
        match self.run_ops(&cur)? {
            Outcome::Clean => return Ok((cur, cur_at, cur_msg, runs, false)),
            Outcome::Mismatch { at, msg } => {
                if let Some(i) = at {
                    cur.truncate(i + 1);
                }
                (cur_at, cur_msg) = (at, msg);
            }
        }
        let mut n = 2usize;
        'outer: while cur.len() >= 2 {
            let chunk = cur.len().div_ceil(n);
            let mut start = 0;
            while start < cur.len() {
                if runs >= self.cfg.shrink_runs || Instant::now() > deadline {
                    break 'outer;
                }
                let mut cand = cur.clone();
                cand.drain(start..(start + chunk).min(cur.len()));
                runs += 1;
                if let Outcome::Mismatch { at, msg } = self.run_ops(&cand)? {
                    if let Some(i) = at {
                        cand.truncate(i + 1);
                    }
                    cur = cand;
                    (cur_at, cur_msg) = (at, msg);
                    n = (n - 1).max(2);
                    continue 'outer;
                }
                start += chunk;
            }
            if n >= cur.len() {
                break;
            }
            n = (n * 2).min(cur.len());
        }
        Ok((cur, cur_at, cur_msg, runs, true))
    }
}
