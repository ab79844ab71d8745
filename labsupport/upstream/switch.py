"""`Switch` moved to `labsupport.switch` (the guard and the loop-lag monitor use it too); this name
stays only until `labsupport.distributed` imports it from there."""

from ..switch import Switch

__all__ = ["Switch"]
