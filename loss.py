"""Fine-tuning losses as pure functions (TF: the loss lines of train.py's `model` and `mgpu_train`).

Reductions are the original's: the LM loss of a sequence is the mask-weighted mean over its
positions 1..T-1, and the training loss is mean(task losses) + lm_coef * mean(LM losses).
"""
import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from precision import matmul_dtype, no_autocast


def per_element_ce(logits, targets):
    """Return the cross-entropy of each row of logits [N, V] against targets [N], in float32 or wider."""
    return F.cross_entropy(logits.to(torch.promote_types(logits.dtype, torch.float32)), targets, reduction='none')


def lm_losses(lm_logits, X, M, criterion=per_element_ce):
    """Return the LM loss of each sequence [N] from lm_logits [N*(T-1), V], X [..., T, 2], M [..., T]."""
    x = X.reshape(-1, X.size(-2), 2)  # [..., T, 2] -> [N, T, 2]
    m = M.reshape(-1, M.size(-1))[:, 1:].to(torch.float32)  # [..., T] -> [N, T-1]
    losses = criterion(lm_logits, x[:, 1:, 0].reshape(-1)).view(m.shape)  # [N*(T-1)] -> [N, T-1]
    return (losses * m).sum(1) / m.sum(1)


LM_CHUNK = 8192  # positions the LM loss decodes at once in train.py and pretrain.py: bounds [positions x rows]
# logits log-softmaxed at once in the forward (16 MiB in fp32, ~100 rows at 40,558 words): blocks this size
# stay in cache and their buffers are reused, where a [K, V] fp32 copy and log-softmax are fresh pages each
# step; smaller blocks were faster on one thread but pay a parallel region each (~10 ms apiece on a loaded VM)
LOG_SOFTMAX_BLOCK = 1 << 22


def blocked_cross_entropy(logits, targets):
    """Return per_element_ce(logits, targets) [k] for logits [k, V], widening a block of rows at a time.

    The same log_softmax of the widened logits as per_element_ce, row by row, so the same values; but only
    a block of rows is ever in fp32, instead of a [k, V] fp32 copy and a [k, V] log-softmax.
    """
    dtype = torch.promote_types(logits.dtype, torch.float32)
    losses = torch.empty(logits.size(0), dtype=dtype, device=logits.device)
    step = max(1, LOG_SOFTMAX_BLOCK // max(logits.size(1), 1))
    for s in range(0, logits.size(0), step):
        logp = F.log_softmax(logits[s:s + step], 1, dtype=dtype)  # [rows, V] in fp32 (or wider)
        losses[s:s + step] = -logp.gather(1, targets[s:s + step, None]).squeeze(1)
    return losses


LOGITS_ROW_ALIGN = 16  # values: a logits row starts every 64 bytes in fp32


def aligned_logits(rows, we):
    """Return rows @ we.T [K, V] in a [K, W] buffer, W the next multiple of LOGITS_ROW_ALIGN, the W - V extra columns
    -inf (a softmax over the W columns is the softmax over the V: exp(-inf) = 0). Same product, faster: written with
    an odd row stride (GPT-2's 50,257 rows), the BLAS product took 616-699 ms for 1,024 x 768 rows, 466 ms aligned
    (fp32, the 2-core AVX2 CPU of BENCHMARKS.md, "Issue 31"); the log-softmax and softmax run on whole rows."""
    n_rows = we.size(0)
    width = -(-n_rows // LOGITS_ROW_ALIGN) * LOGITS_ROW_ALIGN
    logits = torch.empty(rows.size(0), width, dtype=rows.dtype, device=rows.device)
    torch.mm(rows, we.t(), out=logits[:, :n_rows])  # [K, n_embd] -> [K, V], rows width apart
    logits[:, n_rows:] = float('-inf')
    return logits


class MaskedLMLoss(torch.autograd.Function):
    """Fused cross-entropy of rows @ we^T against targets, chunk_size rows of logits at a time.

    Equal to per_element_ce(rows @ we.T, targets) in value and gradient. The logits are formed in the
    matmul's dtype (autocast's under autocast, e.g. bf16, else the inputs'); the loss is log-softmaxed in
    fp32 a block of rows at a time; backward forms d loss / d logits = softmax - onehot once, with softmax's
    fused kernel (fp32 inside) and the targets' entries from the fp32 losses, and applies each row's incoming
    gradient to the [chunk, n_embd] sides of the two matmuls rather than to the [chunk, V] gradient. With
    one chunk the logits are kept for backward; with several, backward recomputes each chunk's logits. The
    logits are formed with aligned rows (aligned_logits), their extra columns -inf.
    """

    @staticmethod
    def forward(ctx, rows, we, targets, chunk_size):
        dtype = matmul_dtype(rows, we)
        with no_autocast(rows.device.type):  # the dtypes are chosen here, explicitly
            we_c = we.to(dtype)
            losses = torch.empty(rows.size(0), dtype=torch.promote_types(dtype, torch.float32), device=rows.device)
            logits = None
            for s in range(0, rows.size(0), chunk_size):
                logits = aligned_logits(rows[s:s + chunk_size].to(dtype), we_c)  # [chunk, n_embd] -> [chunk, W]
                losses[s:s + chunk_size] = blocked_cross_entropy(logits, targets[s:s + chunk_size])
        ctx.save_for_backward(rows, we_c, targets, losses)
        # an intermediate, used up by the first backward (a second one, with retain_graph, recomputes it)
        ctx.logits = logits if rows.size(0) <= chunk_size else None
        ctx.chunk_size, ctx.we_dtype = chunk_size, we.dtype
        return losses

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_losses):
        rows, we_c, targets, losses = ctx.saved_tensors
        logits, ctx.logits = ctx.logits, None
        dtype, acc = we_c.dtype, losses.dtype
        grad_rows = torch.empty_like(rows) if ctx.needs_input_grad[0] else None
        grad_we = None
        # fp16's range is narrow: the scaled rows are brought to at most 1 before the cast, undone after it
        unit = None
        if rows.size(0) and torch.finfo(dtype).max < 1e38:
            unit = grad_losses.abs().amax().to(acc).clamp_min(torch.finfo(acc).tiny)
        with no_autocast(rows.device.type):
            for s in range(0, rows.size(0), ctx.chunk_size):
                chunk = slice(s, s + ctx.chunk_size)
                if logits is None:
                    logits = aligned_logits(rows[chunk].to(dtype), we_c)  # [chunk, n_embd] -> [chunk, W]
                g = torch.softmax(logits, 1)[:, :we_c.size(0)]  # [chunk, V] in the matmul dtype, computed in fp32
                logits = None
                # softmax - onehot: the targets' entries p - 1 from the fp32 losses (p = exp(-loss))
                g[torch.arange(g.size(0), device=g.device), targets[chunk]] = torch.expm1(-losses[chunk]).to(dtype)
                scale = grad_losses[chunk].to(acc)[:, None]  # each row's d total / d loss
                if grad_rows is not None:
                    grad_rows[chunk] = (g @ we_c).to(acc) * scale  # [chunk, V] @ [V, n_embd] -> [chunk, n_embd]
                if ctx.needs_input_grad[1]:
                    scaled = rows[chunk].to(acc) * (scale if unit is None else scale / unit)
                    part = g.t() @ scaled.to(dtype)  # [V, chunk] @ [chunk, n_embd] -> [V, n_embd]
                    part = part.to(acc) if unit is None else part.to(acc) * unit
                    grad_we = part if grad_we is None else grad_we.add_(part)
        if ctx.needs_input_grad[1]:
            if grad_we is None:  # no rows: nothing reaches we
                grad_we = torch.zeros(we_c.shape, dtype=acc, device=we_c.device)
            grad_we = grad_we.to(ctx.we_dtype)
        return grad_rows, grad_we, None, None


def token_losses(rows, we, targets, chunk_size=None):
    """Return the cross-entropy [K] of each row of rows @ we.T [K, V] against targets [K] (MaskedLMLoss: fused,
    chunk_size rows of logits at a time, all at once when None)."""
    return MaskedLMLoss.apply(rows, we, targets, chunk_size or max(rows.size(0), 1))


def lm_losses_from_hidden(h, we, X, M, chunk_size=None):
    """Return the LM loss of each sequence [N] decoding only the positions whose mask is 1.

    Equal to lm_losses(h[:, :-1] @ we.T, X, M): padded positions carry weight 0 there, so skipping
    them changes nothing but the cost. chunk_size bounds the logits kept in memory (None: all at once).
    """
    x = X.reshape(-1, X.size(-2), 2)
    m = M.reshape(-1, M.size(-1))[:, 1:]  # [N, T-1]
    keep = m.reshape(-1) != 0
    rows = h[:, :-1].reshape(-1, h.size(-1))[keep]  # [N*(T-1), n_embd] -> [K, n_embd]
    targets = x[:, 1:, 0].reshape(-1)[keep]
    losses = token_losses(rows, we, targets, chunk_size)  # [K, n_embd] -> [K]
    seq = torch.arange(m.size(0), device=m.device).repeat_interleave(m.size(1))[keep]
    weighted = losses * m.reshape(-1)[keep]
    sums = torch.zeros(m.size(0), dtype=weighted.dtype, device=h.device).index_add_(0, seq, weighted)
    return sums / m.sum(1)


def clf_losses(clf_logits, Y, criterion=per_element_ce):
    """Return the cross-entropy of each example [B] for clf_logits [B, C] and labels Y [B]."""
    return criterion(clf_logits, Y.long())


def similarity_losses(scores, Y):
    """Return the squared error of each predicted score [B] against the gold scores Y [B] (STS-B)."""
    return (scores.float() - Y.float()) ** 2


def task_losses(clf_logits, ymb):
    """Return the per-example task loss: squared error for a regression head's scores [B], else cross-entropy."""
    if clf_logits.dim() == 1:  # SimilarityHead with one output: STS-B scores
        return similarity_losses(clf_logits, ymb)
    return clf_losses(clf_logits, ymb)


def train_loss(task_losses, lm_losses=None, lm_coef=0.5):
    """Return mean(task_losses) + lm_coef * mean(lm_losses); the task term alone when lm_coef is 0."""
    loss = task_losses.mean()
    if lm_coef > 0 and lm_losses is not None:
        loss = loss + lm_coef * lm_losses.mean()
    return loss


class MultipleChoiceLossCompute:
    """Compatibility wrapper for notebooks written against the earlier port: losses, backward, step."""

    def __init__(self, lm_criterion, clf_criterion, lm_coef, opt=None):
        self.lm_criterion = lm_criterion
        self.clf_criterion = clf_criterion
        self.lm_coef = lm_coef
        self.opt = opt

    def task_losses(self, clf_logits, Y):
        """Return the per-example task losses."""
        return clf_losses(clf_logits, Y, criterion=self.clf_criterion or per_element_ce)

    def __call__(self, X, Y, M, clf_logits, lm_logits=None, only_return_losses=False):
        """Return (clf_losses, lm_losses) with only_return_losses, else back-propagate and return the loss."""
        task = self.task_losses(clf_logits, Y)
        lm = None
        if lm_logits is not None:
            lm = lm_losses(lm_logits, X, M, criterion=self.lm_criterion or per_element_ce)
        if only_return_losses:
            return task, lm
        loss = train_loss(task, lm, self.lm_coef)
        loss.backward()
        if self.opt is not None:
            self.opt.step()
            self.opt.zero_grad()
        return loss.item()


class ClassificationLossCompute(MultipleChoiceLossCompute):
    """The same wrapper for ClfHead logits [B, n_class]."""


class SimilarityLossCompute(MultipleChoiceLossCompute):
    """The same wrapper for SimilarityHead scores [B], with the squared-error task loss."""

    def task_losses(self, clf_logits, Y):
        """Return the per-example squared errors."""
        return similarity_losses(clf_logits, Y)
