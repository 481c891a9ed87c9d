"""Looking into a running lab and disturbing it: packet captures, the kernel's socket view,
diagnostics, and faults (link failures, partitions, killed agents). Used by `Lab`, which
hands these modules its hosts; they never import the lab.
"""
