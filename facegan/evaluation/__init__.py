"""Scoring generators against real shards: offline (`facegan eval`, `facegan compare`) and during
training (`PeriodicEval`). Never imports facegan.launch: Ray tasks (facegan.launch.evaluate) compute
shares and hand them to `evaluate`.
"""

from facegan.evaluation.offline import (CHUNK, EvalRequest, Share, compute_share, draw_chunk, evaluate,
                                        format_table, write_result)

__all__ = ["CHUNK", "EvalRequest", "Share", "compute_share", "draw_chunk", "evaluate", "format_table", "write_result"]
