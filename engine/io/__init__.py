"""Input and output: FITS reading and header normalisation, Zarr frame cubes, Arrow tables.

One thing per module (fits, headers, timestamps, frame_type, bayer, cube, schemas, tables). This
package knows nothing of the stages that use it; it only aggregates its modules and defines
nothing.
"""
