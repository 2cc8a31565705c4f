from tfp_ae.cli import main

main()
