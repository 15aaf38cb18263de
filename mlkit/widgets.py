"""Interactive widgets for notebooks (ipywidgets): change a task or the adaptation and see the result."""
from __future__ import annotations

import torch

from .algorithms import MAML
from .plot import sine_adaptation
from .tasks.sinusoid import Sinusoid


def sine_explorer(algorithm: MAML, max_shots: int = 20, max_steps: int = 20):
    """Sliders for the number of support points (shots), inner steps, inner learning rate and the task; every
    change re-adapts ``algorithm`` (trained on sinusoids) to the task and redraws it.

    Returns the widget (display it, or let it be a cell's last value). Needs ``ipywidgets``."""
    import matplotlib.pyplot as plt

    try:
        import ipywidgets as widgets
    except ImportError:
        raise ImportError("mlkit.widgets needs ipywidgets: pip install 'mlkit[widgets]' (or ipywidgets>=8)") from None
    shots = widgets.IntSlider(value=5, min=1, max=max_shots, description="shots")
    steps = widgets.IntSlider(value=1, min=0, max=max_steps, description="inner steps")
    inner_lr = widgets.FloatLogSlider(value=0.01, base=10, min=-3, max=-0.5, step=0.1, description="inner lr",
                                      readout_format=".3f")
    task = widgets.IntSlider(value=0, min=0, max=99, description="task")
    output = widgets.Output()

    def redraw(_=None) -> None:
        batch = Sinusoid(shots=shots.value, queries=1).sample(1, generator=torch.Generator().manual_seed(task.value))
        with output:
            output.clear_output(wait=True)
            fig, ax = plt.subplots(figsize=(6, 3.5))
            sine_adaptation(algorithm, batch, steps=(0, steps.value), inner_lr=inner_lr.value, ax=ax)
            ax.set_ylim(-6, 6)
            plt.show()

    for control in (shots, steps, inner_lr, task):
        control.observe(redraw, names="value")
    redraw()
    return widgets.VBox([widgets.HBox([shots, steps]), widgets.HBox([inner_lr, task]), output])
