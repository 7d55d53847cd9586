"""The session directory (SPEC §7), the contract between processes, tools and users: every file name in
it, a run's writer (log, metrics, best and last checkpoints, the run record), and reading a whole session
back (StoredSession), for the summaries, the plots and the launch scripts.

    <dir>/session.json                  the run record (record.RunRecord), written by the first network
    <dir>/<i>.log  metrics_<i>.jsonl  best_<i>.t7  last_<i>.t7      network i of a grafting session
    <dir>/<i>.out                       network i's console, written by the launchers
    <dir>/<i>.rank<k>.out               the console of rank k > 0 of network i (several ranks per network)
    <dir>/<i>.lock  (run.lock)          held while network i (a single run) runs: one process each
    <dir>/pack_<a>-<b>.out              the console of the pack of networks a..b (--pack), by the launchers
    <dir>/pack_<a>-<b>.commit           while that pack moves its members' last_<i>.t7.pending into place
    <dir>/exchange/net<i>_epoch<e>.t7   network i's pre-graft weights of epoch e
    <dir>/exchange/net<i>.alive|.done|.failed   its heartbeat and end markers
    <dir>/train.log  metrics.jsonl  best.pth.tar  last.pth.tar      a single run (stripe pruning)
    <dir>/prune.json  pruned.pth.tar  pruned.pt2                    what stripe pruning leaves
    <dir>/prune.log  sweep.csv  sweep.md  sweep.png                 stripe_pruning/prune.py's log and sweep
    <dir>/plots/                        figures made by scripts/summarize.py
    <dir>/tb/<i>/                       network i's TensorBoard event files (a single run's: tb/1/)

Reading needs no torch (the launch scripts' checks start fast): the writer imports checkpoint.py when saving.
"""
from .claim import AlreadyRunning, claim_run, release_run, stale_temporaries
from .names import (CONFIG_FILE, EXCHANGE_DIR, MARKERS, PLOTS_DIR, PRUNE_LOG, PRUNE_REPORT, PRUNED_CHECKPOINT,
                    PRUNED_PROGRAM, SINGLE_RUN_FILES, SWEEP_CSV, SWEEP_PLOT, SWEEP_TABLE, TENSORBOARD_DIR, SessionFiles,
                    console_file, exchange_dir, exchange_marker, exchange_weights, network_files, pack_commit,
                    pack_console_file, pending, tensorboard_dir)
from .reader import (NOT_SESSIONS, SEARCH_DEPTH, NotASession, StoredNetwork, StoredSession, find_sessions,
                     is_session, network_indices, read_failure, read_jsonl, read_network, read_object, read_record,
                     read_session)
from .writer import RankSession, Session
