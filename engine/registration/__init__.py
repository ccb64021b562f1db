"""Registration: map the reference star table onto every frame, whatever the telescope did.

Frames from mounts without GoTo or good tracking drift by hundreds of pixels, jump when the
observer re-centres, and turn by 180 degrees at a meridian flip. The package, bottom up:

- `transform` — the similarity `Transform` (reference -> frame) and its least-squares fit;
- `asterisms` — matching two star lists by triangles of bright stars (`match_transform`);
- `recentring` — windowed centroids around predicted positions (`recentre`);
- `tracking` — `FrameTracker`, the one driver that registers a run's frames in order (tracking
  re-centred stars, falling back to asterisms), `register_images` over images, `register_frames`
  over detection lists, `registrations_table`, `stack_reference`;
- `catalogue` — the target in a star table and a star table matched to a catalogue;
- `solve` — the sky solution (WCS) of a run's reference frame.

Conventions: positions are 0-based with pixel centres on integers, x = column, y = row.
"""

from engine.registration.asterisms import match_transform
from engine.registration.catalogue import identify_target, match_catalogue, sky_to_pixels
from engine.registration.recentring import recentre
from engine.registration.tracking import (FrameTracker, Registration, register_frames,
                                          register_images, registrations_table, stack_reference)
from engine.registration.transform import Transform, fit_transform

__all__ = [
    "FrameTracker",
    "Registration",
    "Transform",
    "fit_transform",
    "identify_target",
    "match_catalogue",
    "match_transform",
    "recentre",
    "register_frames",
    "register_images",
    "registrations_table",
    "sky_to_pixels",
    "stack_reference",
]
