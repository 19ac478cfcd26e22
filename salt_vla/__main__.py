from salt_vla.cli import main

main()
