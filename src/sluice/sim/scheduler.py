"""vLLM V1's scheduling step: one token budget, running requests first, then waiting ones.

* RUNNING requests, oldest first, each get their next token (decode) or their next prefill chunk;
  chunked prefill is always on.
* When a request needs a block and none is free, the newest running request (under the priority
  policy: the one with the largest (priority, arrival)) is preempted: its blocks are freed (their
  hashes stay cached), its progress is reset, and it goes back to the front of WAITING, to be
  recomputed later. If the victim is the request itself, it stops there.
* Then, unless something was preempted in this step, WAITING requests are admitted in order while
  the budget, ``max_num_seqs`` and free blocks allow; each first looks up its longest cached prefix
  (at most ``num_tokens - 1`` tokens: the last token is always computed).
* Blocks become cached as soon as a step that fills them is scheduled (vLLM's ``cache_blocks``
  inside ``allocate_slots``), prompt and generated tokens alike.
"""

from __future__ import annotations

from sluice.sim.block_pool import BlockPool
from sluice.sim.request import EngineStats
from sluice.sim.sequence import Sequence, Status
from sluice.sim.waiting_queue import make_waiting_queue


class Batch:
    """The requests of one step (each with ``num_scheduled`` set) and the step's cost inputs."""

    __slots__ = ("attention_work2", "context_tokens", "num_tokens", "seqs")

    def __init__(self) -> None:
        self.seqs: list[Sequence] = []
        self.num_tokens = 0  # T: tokens computed in the step
        self.context_tokens = 0  # C: KV entries read, Σ (computed + new)
        # Twice Σ new·(computed + new/2): an integer, so every way of summing it agrees exactly.
        self.attention_work2 = 0

    @property
    def attention_work(self) -> float:
        return self.attention_work2 * 0.5

    def add(self, seq: Sequence, n: int) -> None:
        c = seq.num_computed_tokens
        seq.num_scheduled = n
        seq.num_computed_tokens = c + n
        self.seqs.append(seq)
        self.num_tokens += n
        self.context_tokens += c + n
        self.attention_work2 += n * (2 * c + n)

    def drop(self, seq: Sequence) -> None:
        """Take back a scheduled request (preempted later in the same step)."""
        n = seq.num_scheduled
        c = seq.num_computed_tokens - n
        self.seqs.remove(seq)
        self.num_tokens -= n
        self.context_tokens -= c + n
        self.attention_work2 -= n * (2 * c + n)
        seq.num_scheduled = 0


class Scheduler:
    def __init__(
        self,
        pool: BlockPool,
        stats: EngineStats,
        max_num_seqs: int,
        max_num_batched_tokens: int,
        policy: str = "fcfs",
        max_loras: int | None = None,
    ) -> None:
        self.pool = pool
        self.stats = stats
        self.block_size = pool.block_size
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.policy = policy
        self.max_loras = max_loras
        self.caching = pool.enable_caching
        self.waiting = make_waiting_queue(policy)
        self.running: list[Sequence] = []

    def add(self, seq: Sequence) -> None:
        seq.status = Status.WAITING
        self.waiting.push(seq)

    def has_work(self) -> bool:
        return bool(self.running) or len(self.waiting) > 0

    # -- one step -----------------------------------------------------------------------------

    def schedule(self, now: float) -> Batch:
        batch = Batch()
        budget = self.max_num_batched_tokens
        preempted = False
        running = self.running
        scheduled = batch.seqs
        running_status = Status.RUNNING  # a local: this is the hot loop
        # Batch totals live in locals on this hot path and are written back once.
        num_tokens = context = work2 = 0
        # A snapshot: preemption removes requests from ``running`` while we walk it.
        for seq in running.copy() if running else ():
            if seq.status is not running_status:
                continue  # preempted earlier in this step
            computed = seq.num_computed_tokens
            n = seq.num_tokens - computed
            if n > budget:
                n = budget
            end = computed + n
            if end > seq.capacity:
                need = (end - seq.capacity + self.block_size - 1) // self.block_size
                if need > self.pool.free_queue.num_free:
                    preempted = True
                    batch.num_tokens, batch.context_tokens = num_tokens, context
                    batch.attention_work2 = work2
                    room = self._make_room(seq, need, batch)
                    num_tokens, context = batch.num_tokens, batch.context_tokens
                    work2 = batch.attention_work2
                    if not room:
                        break  # the request itself was the victim: nothing after it runs
                self.grow(seq, need)
            if end >= seq.next_cache_at:
                self.cache(seq, end // self.block_size)
            seq.num_scheduled = n
            seq.num_computed_tokens = end  # as vLLM: progress is committed when scheduled
            scheduled.append(seq)
            num_tokens += n
            context += end
            work2 += n * (2 * computed + n)
            budget -= n
            if budget == 0:
                break
        batch.num_tokens, batch.context_tokens, batch.attention_work2 = num_tokens, context, work2
        if not preempted:
            self._admit_waiting(batch, budget, now)
        return batch

    def grow(self, seq: Sequence, need: int) -> None:
        if need == 1:
            seq.block_table.append(self.pool.allocate_one())
        else:
            seq.block_table.extend(self.pool.allocate(need))
        seq.capacity += need * self.block_size

    def _make_room(self, seq: Sequence, need: int, batch: Batch) -> bool:
        """Preempt until ``need`` blocks are free; False when ``seq`` itself had to go."""
        while need > self.pool.free_queue.num_free:
            victim = self._pick_victim()
            if victim in batch.seqs:
                batch.drop(victim)
            self.preempt(victim)
            if victim is seq:
                return False
        return True

    def _pick_victim(self) -> Sequence:
        if self.policy == "priority":
            return max(self.running, key=lambda s: (s.priority, s.arrival_order))
        return self.running[-1]

    def preempt(self, seq: Sequence) -> None:
        self.running.remove(seq)
        self.pool.free(seq.block_table)
        seq.reset_for_recompute()
        seq.num_scheduled = 0
        seq.status = Status.WAITING
        self.waiting.push_front(seq)
        self.stats.num_preemptions_total += 1

    def _admit_waiting(self, batch: Batch, budget: int, now: float) -> None:
        waiting = self.waiting
        pool = self.pool
        bs = self.block_size
        max_loras = self.max_loras
        # Adapters in this step's batch; a request needing one more than max_loras waits.
        loras = {s.lora_name for s in batch.seqs if s.lora_name} if max_loras else set()
        skipped: list[Sequence] = []
        while len(waiting) and budget > 0 and len(self.running) < self.max_num_seqs:
            seq = waiting.peek()
            lora = seq.lora_name
            if max_loras and lora and lora not in loras and len(loras) >= max_loras:
                skipped.append(waiting.pop())  # vLLM skips it and keeps its place in line
                continue
            hits = pool.lookup(seq.block_hashes, (seq.num_tokens - 1) // bs) if self.caching else []
            hit_tokens = len(hits) * bs
            n = min(seq.num_tokens - hit_tokens, budget)
            new_blocks = (hit_tokens + n + bs - 1) // bs - len(hits)
            idle_hits = sum(1 for b in hits if b.ref_cnt == 0)
            if new_blocks + idle_hits > pool.free_queue.num_free:
                break
            waiting.pop()
            pool.touch(hits)
            table = hits + pool.allocate(new_blocks) if new_blocks else hits
            seq.set_blocks(table, len(hits))
            seq.num_computed_tokens = hit_tokens
            if not seq.was_preempted:
                self.stats.prefix_cache_queries_total += seq.num_tokens
                self.stats.prefix_cache_hits_total += hit_tokens
                seq.num_cached_tokens = hit_tokens
                seq.timing.first_scheduled = now
            seq.status = Status.RUNNING
            self.running.append(seq)
            end = hit_tokens + n
            if end >= seq.next_cache_at:
                self.cache(seq, end // bs)
            batch.add(seq, n)
            budget -= n
            if lora:
                loras.add(lora)
        for seq in reversed(skipped):
            waiting.push_front(seq)

    def cache(self, seq: Sequence, num_full: int) -> None:
        """Register the request's blocks that are now full (up to ``num_full``) in the cache."""
        first = seq.num_cached_blocks
        if num_full == first + 1 and self.caching:  # the common case: decode filled one block
            bs = self.block_size
            hashes = seq.block_hashes
            self.pool.cache_block(
                seq.block_table[first],
                hashes[first],
                hashes[first - 1] if first else None,
                seq.token_ids[first * bs : num_full * bs],
                seq.lora_name,
            )
        else:
            self.pool.cache_blocks(
                seq.block_table, seq.block_hashes, first, num_full, seq.token_ids, seq.lora_name
            )
        seq.num_cached_blocks = num_full
        seq.next_cache_at = (num_full + 1) * self.block_size

    # -- leaving ------------------------------------------------------------------------------

    def release(self, seq: Sequence) -> None:
        """A request finished or was aborted: give its blocks back, take it out of the queues."""
        if seq.status is Status.RUNNING:
            self.running.remove(seq)
        elif seq.status is Status.WAITING:
            self.waiting.remove(seq)
        self.pool.free(seq.block_table)
        seq.set_blocks([], 0)
        seq.status = Status.FINISHED

    def release_finished(self, finished: list[Sequence]) -> None:
        """Batch form of ``release`` for requests that finished in a step (all RUNNING)."""
        free = self.pool.free
        for seq in finished:
            free(seq.block_table)
            seq.set_blocks([], 0)
            seq.status = Status.FINISHED
        self.running = [s for s in self.running if s.status is Status.RUNNING]
