"""The sample application: loadgen -> web -> catalog -> reviews (v1, v2). aiohttp, small."""
