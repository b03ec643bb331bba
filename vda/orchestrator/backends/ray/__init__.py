"""Ray backend: `vda depth --backend ray`, one long-lived Ray actor per device, anywhere in a Ray cluster.

Each device is an actor (`actor.DeviceActor`) that holds its resource (a GPU, or CPUs for a CPU device) on whichever
node Ray places it, spread over the nodes. It runs vda.device.worker's DeviceWorker in its own process: it loads the
model once and computes the units the queue (vda.orchestrator.queue) hands it, as a local worker process does, behind
the same WorkerHandle (`handle.RayHandle`).

What crosses the cluster, and why:
- Before any work (`nodes`), one task per node checks that it reads every input at the driver's path, and whether it
  shares the run folder and the output folder with the driver (it finds a token the driver wrote there, and the
  driver finds its answer). One line says which nodes do what.
- Results: a node that shares the run folder stores its actors' pieces and markers there itself, with the worker's
  own writer (vda.device.worker.write_piece); only messages, a few hundred bytes per window, reach the driver. A
  node that does not sends each piece through the object store, and the driver stores it (fetch and store in two
  stages). Resume, merge and the output layout are those of the other backends either way.
- Merges (`merges`): each video's merge is a Ray task, with its own CPU request, on a node that shares both folders;
  a failed one, or one whose node is lost, runs again on another node. Where no node shares them, the driver merges.
- Plans: sent to an actor with its first unit of each video (a few kB).
- Weights (`weights`): put in the object store once per run; each node fetches them once into a node-local cache.

Faults: an actor that dies, or whose node is lost, ends its stream with an error; its handle then reports a non-zero
exit, and the queue redoes the units it held on the other devices, as for a local worker that died. Ctrl-C stops
every actor and merge (`close`); a driver killed with -9 takes its actors and tasks with it (Ray ends those of a
driver that is gone), and the same command resumes from RUN_DIR.

    cluster.py   the connection, node ids as logs show them     nodes.py    the input and shared-folder checks
    actor.py     DeviceActor (in the actor's process)           stdout.py   the actor's sys.stdout, into its stream
    handle.py    RayHandle (on the driver)                      merges.py   merges as Ray tasks, with their retries
    weights.py   the weights through the object store           backend.py  RayBackend, the contract
"""

from vda.orchestrator.backends.ray.backend import RayBackend

__all__ = ["RayBackend"]
