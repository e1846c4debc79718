"""Fine-tuning losses as pure functions (TF: the loss lines of train.py's `model` and `mgpu_train`).

Reductions are the original's: the LM loss of a sequence is the mask-weighted mean over its
positions 1..T-1, and the training loss is mean(task losses) + lm_coef * mean(LM losses).
"""
import torch
import torch.nn.functional as F


def per_element_ce(logits, targets):
    """Return the cross-entropy of each row of logits [N, V] against targets [N], in float32 or wider."""
    return F.cross_entropy(logits.to(torch.promote_types(logits.dtype, torch.float32)), targets, reduction='none')


def lm_losses(lm_logits, X, M, criterion=per_element_ce):
    """Return the LM loss of each sequence [N] from lm_logits [N*(T-1), V], X [..., T, 2], M [..., T]."""
    x = X.reshape(-1, X.size(-2), 2)  # [..., T, 2] -> [N, T, 2]
    m = M.reshape(-1, M.size(-1))[:, 1:].to(torch.float32)  # [..., T] -> [N, T-1]
    losses = criterion(lm_logits, x[:, 1:, 0].reshape(-1)).view(m.shape)  # [N*(T-1)] -> [N, T-1]
    return (losses * m).sum(1) / m.sum(1)


class MaskedLMLoss(torch.autograd.Function):
    """Cross-entropy of h @ we^T rows against targets, chunked so no full logits matrix is kept.

    Forward computes the loss of each row chunk by chunk, saving only h, we and the log-sum-exp;
    backward recomputes each chunk's softmax. Exactly the loss of F.cross_entropy(h @ we.T).
    """

    @staticmethod
    def forward(ctx, h, we, targets, chunk_size):
        dtype = torch.promote_types(h.dtype, torch.float32)  # at least float32, as per_element_ce
        losses = torch.empty(h.size(0), dtype=dtype, device=h.device)
        lse = torch.empty_like(losses)
        for s in range(0, h.size(0), chunk_size):
            logits = (h[s:s + chunk_size] @ we.t()).to(dtype)  # [chunk, n_embd] -> [chunk, V]
            lse[s:s + chunk_size] = torch.logsumexp(logits, dim=1)
            picked = logits.gather(1, targets[s:s + chunk_size, None]).squeeze(1)
            losses[s:s + chunk_size] = lse[s:s + chunk_size] - picked
        ctx.save_for_backward(h, we, targets, lse)
        ctx.chunk_size = chunk_size
        return losses

    @staticmethod
    def backward(ctx, grad_losses):
        h, we, targets, lse = ctx.saved_tensors
        chunk_size = ctx.chunk_size
        grad_h = torch.empty_like(h) if ctx.needs_input_grad[0] else None
        grad_we = torch.zeros_like(we, dtype=lse.dtype) if ctx.needs_input_grad[1] else None
        for s in range(0, h.size(0), chunk_size):
            hs = h[s:s + chunk_size]
            logits = (hs @ we.t()).to(lse.dtype)
            # d loss / d logits = softmax - onehot, scaled by the incoming gradient of each row
            g = torch.exp(logits - lse[s:s + chunk_size, None])
            g[torch.arange(g.size(0), device=g.device), targets[s:s + chunk_size]] -= 1
            g *= grad_losses[s:s + chunk_size, None]
            g = g.to(h.dtype)
            if grad_h is not None:
                grad_h[s:s + chunk_size] = g @ we
            if grad_we is not None:
                grad_we += (g.t() @ hs).to(lse.dtype)
        if grad_we is not None:
            grad_we = grad_we.to(we.dtype)
        return grad_h, grad_we, None, None


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
    if chunk_size is None or rows.size(0) <= chunk_size:
        losses = per_element_ce(rows @ we.t(), targets)  # [K, V] -> [K]
    else:
        losses = MaskedLMLoss.apply(rows, we, targets, chunk_size)
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
